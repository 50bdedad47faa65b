"""GlobalPointer nested and flat named-entity recognition for spaCy v3."""
# setup.cfg reads the version from here (a literal, read without importing the package).
__version__ = "0.2.0"

from .model import SpanScores, build_efficient_global_pointer, build_global_pointer, make_grad_scaler
from .pipe import GlobalPointer, make_global_pointer, make_global_pointer_scorer

__all__ = [
    "__version__",
    "GlobalPointer",
    "SpanScores",
    "build_efficient_global_pointer",
    "build_global_pointer",
    "make_global_pointer",
    "make_global_pointer_scorer",
    "make_grad_scaler",
]
