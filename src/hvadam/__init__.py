"""HVAdam: a full-dimension adaptive optimizer (Zhang et al., AAAI 2025) for PyTorch."""

from importlib.metadata import PackageNotFoundError, version

from hvadam.diagnostics import ScopeDiagnostics
from hvadam.optimizer import HVAdam
from hvadam.scope import ScopeState

__all__ = ["HVAdam", "ScopeDiagnostics", "ScopeState"]
try:
    # Defined once, in pyproject.toml; read from the installed package's metadata.
    __version__ = version("hvadam")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
