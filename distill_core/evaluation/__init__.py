"""How a synthetic set is judged: ``protocol`` (``EvalConfig``: train fresh networks on it, test on
the real test set), ``baselines`` (the random-real baseline, cached on disk), ``defaults`` (per
dataset: the network, the protocol, the augmentation)."""
