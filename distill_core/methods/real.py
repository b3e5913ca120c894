"""Per-class real batches for the methods that draw them (DM, DC/DSA, KRR): uniform or
importance-sampled, with the scorer that importance sampling needs."""
from __future__ import annotations

from typing import Callable

import torch

from distill_core.data.sampling import ClassSampler
from distill_core.evaluation.protocol import EvalConfig, train_network
from distill_core.methods.base import Context, Synthetic

EXTRAS = ("sampling_weights", "sampling_batch_loss")  # what a method that draws real batches publishes
# importance sampling scores a fresh random pool of this many real images per class at each refresh
SCORE_POOL = 128
POOL_HELP = "importance sampling: real images per class scored at each refresh, a fresh random pool (0: all)"
WEIGHTINGS = ("plain", "unbiased")
WEIGHTING_HELP = (
    "importance sampling: plain uses the drawn images as they come (the matched class statistic leans towards "
    "high-loss images); unbiased weighs each by 1/(n p), self-normalised in its batch, so it estimates the class's own"
)
# after its first training, the scorer follows the synthetic set with this fraction of its epochs
FOLLOW_FRACTION = 0.1


class RealBatches:
    """Per-class real batches for methods that draw them, uniform or importance-sampled.

    Importance sampling weighs a real image by its loss under "the current model" (the seed paper's
    training phase). Methods that train a network (DC/DSA) pass it; DM and KRR only ever see fresh,
    untrained networks, whose losses are noise, so with ``synthetic`` given the scorer is a fresh
    network trained on the current synthetic set for ``score_steps`` epochs of the evaluation protocol
    (one step each while the set fits a batch of 256): its high-loss real images are the ones the
    synthetic set does not yet explain. The set moves little between refreshes, so at later refreshes
    the same scorer trains on for a tenth of those epochs instead of starting afresh. A method with a
    loss of its own for each real image (KRR: its kernel fit's residual) passes ``score``, which
    returns that loss for given indices and replaces the scorer. Each refresh scores a fresh random
    pool of ``pool`` images per class (0: every image), the draws coming from it until the next.
    Uniform sampling draws exactly as before. With ``weighting`` "unbiased", ``weights`` gives each
    importance-sampled draw its weights 1/(n p), self-normalised per class (``ClassSampler.batch_weights``),
    for the method to use in its matched mean or loss.
    """

    def __init__(
        self,
        ctx: Context,
        refresh_every: int,
        synthetic: Callable[[], Synthetic] | None = None,
        score_steps: int = 100,
        score: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pool: int = SCORE_POOL,
        weighting: str = "plain",
    ) -> None:
        self.ctx = ctx
        self.weighting = weighting
        self.sampler = ClassSampler(ctx.data, ctx.generator)
        self.refresh_every = refresh_every
        self.synthetic = synthetic
        self.score_steps = score_steps
        self.score = score
        self.pool = pool
        self.scorer_net: torch.nn.Module | None = None
        self.calls = 0

    @property
    def importance(self) -> bool:
        return self.ctx.sampling == "importance"

    def due(self) -> bool:
        return self.importance and self.refresh_every > 0 and self.calls % self.refresh_every == 0

    def sample(self, b: int, model: torch.nn.Module | None = None) -> torch.Tensor:
        """(C, b) indices; with importance sampling, ``model`` (or the scorer) rescores the images when due."""
        if self.due():
            self.refresh(model)
        self.calls += 1
        return self.sampler.sample(b)

    def weights(self, drawn: torch.Tensor) -> torch.Tensor | None:
        """(C, b) weights of the draw just made where sampling is by importance and weighting is
        "unbiased"; None where the draws are to be used plainly (uniform sampling, or "plain")."""
        if not (self.importance and self.weighting == "unbiased"):
            return None
        return self.sampler.batch_weights(drawn)

    def scorer(self) -> torch.nn.Module:
        """A network trained briefly on the current synthetic set: ``score_steps`` epochs the first
        time, then the same network a tenth of that more each time (a fresh one where none is given)."""
        if self.synthetic is None or self.score_steps < 1:
            return self.ctx.fresh_net()
        epochs = self.score_steps if self.scorer_net is None else max(1, round(FOLLOW_FRACTION * self.score_steps))
        net = self.scorer_net if self.scorer_net is not None else self.ctx.fresh_net()
        syn = self.synthetic()
        cfg = EvalConfig(nets=1, epochs=epochs)  # the evaluation protocol, shortened
        self.scorer_net = train_network(net, syn.images.detach(), syn.labels.detach(), cfg, self.ctx.strategy, self.ctx.generator, syn.lr)
        return self.scorer_net

    def refresh(self, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Rescore a fresh pool of real images with ``model`` (None: ``score`` or the scorer); returns
        the weights (N,)."""
        if model is None and self.score is not None:
            pools = self.sampler.draw_pool(self.pool)
            return self.sampler.set_losses(self.score(torch.cat(pools)), pools)
        net = model if model is not None else self.scorer()
        was_training = net.training
        weights = self.sampler.refresh(net, self.pool)
        net.train(was_training)
        return weights

    def extras(self) -> dict[str, torch.Tensor]:
        """``sampling_weights`` (N,) and ``sampling_batch_loss`` (periods, 2): per refresh period the
        mean loss of the drawn real images beside a uniform batch's, both under that period's scorer."""
        w, history = self.sampler.weights, self.sampler.batch_loss_history()
        out = {} if w is None else {"sampling_weights": w}
        if history is not None:
            out["sampling_batch_loss"] = history
        return out
