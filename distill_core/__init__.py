"""Distillation Explorer's engine: datasets, networks, augmentation, initializers, methods, runs.

Never imports streamlit: the UI (``views/``, ``ui/``) reads snapshots and calls the modules in
``PUBLIC``. Layers, each importing only from the ones above it in this list (a test builds the
import graph, imports inside functions included, and fails on a cycle or an upward import):

1. value types and small tools: ``registry``, ``paths``, ``units``, ``threads``, ``synthetic`` (``Synthetic``,
   ``InitResult``), ``options`` (``Options``: a component's settings with help and limits on
   the fields), ``executor`` (where independent work runs: in process, or Ray tasks);
2. per-family modules: ``data``, ``nets``, ``augment``, ``sampling``, ``evaluate`` (``EvalConfig`` and
   the protocol that uses it), ``defaults`` (per-dataset network, protocol, augmentation),
   ``features``, ``experts``, ``artifacts``, ``baselines`` (the random-real baseline, cached on disk);
3. the registries' members: ``initializers`` (each with an ``Options`` Config) and ``methods/``
   (``base`` declares the protocol, ``Context`` and ``Declares``: what a method needs and publishes);
   ``coreset`` (above ``initializers``: how well their weighted samples keep a class's cost);
4. ``config``: the one module that knows every registry; ``RunConfig`` and ``resolve``, which fills
   every default (method and initializer options included) once, so a saved run reads back exactly;
5. the application: ``run`` (a run in a thread, ``JobManager``), ``store`` (SQLite index and files),
   ``recorder`` (when a run is written), ``workers`` (where the app's runs execute: worker processes,
   Ray actors, or the job manager's threads), ``jobs`` (what all sessions share: store, job manager,
   run factory, full-data references, core sharing), ``estimates`` (time and memory before a run),
   ``cli``, ``bench``, ``sweep`` (accuracy against IPC), ``windows`` (DATM's matching windows compared).
"""
__version__ = "0.1.0"

# the modules a front end (the app, a script) uses; the others are the engine's inside
PUBLIC = (
    "artifacts", "config", "initializers.coreset", "data", "data.builtin", "data.datasets", "methods.experts", "initializers", "runs.jobs", "methods", "paths", "runs.run", "runs.store", "runs.estimates",
    "studies.sweep", "units", "studies.windows",
)
