"""GlobalPointer nested and flat named-entity recognition for spaCy v3."""
from .model import SpanScores, build_efficient_global_pointer, build_global_pointer, make_grad_scaler
from .pipe import GlobalPointer, make_global_pointer, make_global_pointer_scorer

__all__ = [
    "GlobalPointer",
    "SpanScores",
    "build_efficient_global_pointer",
    "build_global_pointer",
    "make_global_pointer",
    "make_global_pointer_scorer",
    "make_grad_scaler",
]
