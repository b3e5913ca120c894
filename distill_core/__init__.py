"""Distillation Explorer's engine: datasets, networks, augmentation, initializers, methods, runs.

Never imports streamlit: the UI (``views/``, ``ui/``) reads snapshots and calls the modules in
``PUBLIC``. The engine's tree shows its layers, one folder each; a module imports only from its own
layer or the ones below it (a test builds the import graph, imports inside functions included, and
fails on an upward import or a cycle). Bottom to top:

0. value types and small tools, at the top of the package: ``registry``, ``options`` (``Options``:
   a component's settings with help and limits on the fields), ``synthetic`` (``Synthetic``,
   ``InitResult``), ``paths``, ``units``, ``threads`` (torch's threads from the load), ``executor``
   (where independent work runs: in process, or Ray tasks), ``artifacts`` (a run's files: the
   synthetic set, a PNG grid);
1. ``data/``: ``datasets`` (``Data``, ``DataError``, fingerprints), ``builtin`` (the named datasets,
   ``DATASETS``), ``uploads`` (a user's ``.npz`` or zip, checked before it is read), ``load`` in
   ``data/__init__.py`` above both; ``augment`` (DSA's transformations), ``sampling`` (real batches),
   ``zca`` (ZCA whitening as MTT's and DATM's authors apply it, and the whitened sets' fingerprints);
2. ``nets/``: ``networks`` (``NetConfig``, the ConvNet family and the cross-architecture networks),
   ``precision`` (bf16 autocast where each hot loop was measured faster, compiled networks);
3. ``evaluation/``: ``protocol`` (``EvalConfig`` and the protocol that uses it), ``baselines`` (the
   random-real baseline, cached on disk), ``defaults`` (per-dataset network, protocol, augmentation);
4. ``methods/``: ``base`` (the protocol, ``Context``, ``Declares``: what a method needs and publishes,
   and the registry), one module per method, ``experts`` (trajectory matching's expert trajectories);
5. ``initializers/``: ``base`` (the registry, each initializer with an ``Options`` Config), one module
   per family (``plain``, ``selection``, ``sensitivity``, ``leverage``, ``correct``), ``features`` (the
   spaces they select in), ``coreset`` (how well their weighted samples keep a class's cost);
6. ``config``: the one module that knows every registry; ``RunConfig`` and ``resolve``, which fills
   every default (method and initializer options included) once, so a saved run reads back exactly;
   ``tiers`` beside it: the ``paper`` tier's settings (the authors') and the ``quick`` tier's;
7. ``runs/``: ``run`` (a run in a thread), ``manager`` (``JobManager``: the runs all sessions share,
   queued), ``store`` (SQLite index and files), ``recorder`` (when a run is written), ``workers`` (where
   the app's runs execute: worker processes, Ray actors, or the job manager's threads), ``jobs`` (what
   all sessions share: store, job manager, run factory, full-data references, core sharing),
   ``estimates`` (time and memory before a run, both tiers' side by side), ``cache`` (the cached
   experts and baselines, listed and cleared);
8. ``studies/``: ``bench`` (a grid of runs), ``sweep`` (accuracy against IPC), ``windows`` (DATM's
   matching windows compared), ``speed`` (how fast each hot loop runs), ``published`` (the published
   figures, one table), ``reproduce`` (the published cells run here beside them);
9. ``cli`` and ``__main__``: ``python -m distill_core``.
"""
__version__ = "0.1.0"

# the modules a front end (the app, a script) uses; the others are the engine's inside
PUBLIC = (
    "artifacts", "config", "data", "data.builtin", "data.datasets", "initializers", "initializers.coreset", "methods",
    "methods.experts", "paths", "tiers", "runs.estimates", "runs.jobs", "runs.run", "runs.store", "studies.reproduce",
    "studies.sweep", "studies.windows", "units",
)
