"""Initial synthetic sets, one module per family, all behind ``base.INITIALIZERS``.

A new initializer is one module here with an ``@initializer("name", Config)`` function (see
``base``) and one import line below; the contract tests (``tests/test_contracts.py``,
``tests/test_initializers.py``) pick it up by themselves.
"""
# isort: off
# in the order the app and ``python -m distill_core list`` show them (each module registers its own)
from distill_core.initializers import plain  # noqa: F401  noise, random
from distill_core.initializers import selection  # noqa: F401  herding, kcenter, kmeans
from distill_core.initializers import sensitivity  # noqa: F401  sensitivity
from distill_core.initializers import leverage  # noqa: F401  krr-sensitivity
from distill_core.initializers import correct  # noqa: F401  correct
# isort: on
from distill_core.initializers.base import INITIALIZERS, check_ipc, create, options_of, weighing_initializers

__all__ = ["INITIALIZERS", "check_ipc", "create", "options_of", "weighing_initializers"]
