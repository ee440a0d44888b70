"""HVAdam (Zhang et al., AAAI 2025) for JAX: an optax ``GradientTransformation``.

``hvadam_jax.hvadam(learning_rate, ...)`` takes the options of the PyTorch ``hvadam.HVAdam``
with the same defaults and meanings; it needs jax and optax only (not torch).
"""

from hvadam_jax.scope import ScopeState, decide
from hvadam_jax.transform import VARIANTS, HVAdamState, diagnostics, hvadam, hvadam_states

__all__ = [
    "VARIANTS",
    "HVAdamState",
    "ScopeState",
    "decide",
    "diagnostics",
    "hvadam",
    "hvadam_states",
]
__version__ = "0.1.0"
