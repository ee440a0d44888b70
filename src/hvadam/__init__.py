"""HVAdam: a full-dimension adaptive optimizer (Zhang et al., AAAI 2025) for PyTorch."""

from hvadam.diagnostics import ScopeDiagnostics
from hvadam.optimizer import HVAdam
from hvadam.scope import ScopeState

__all__ = ["HVAdam", "ScopeDiagnostics", "ScopeState"]
__version__ = "0.1.0"
