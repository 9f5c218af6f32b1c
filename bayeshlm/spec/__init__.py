"""Backend-free model description: parse either notation into one :class:`ModelSpec`."""

from .formula import parse_formula
from .levels import parse_levels
from .model_spec import Centering, ModelSpec, RandomTerm, ResidualStructure, Term

__all__ = ["Centering", "ModelSpec", "RandomTerm", "ResidualStructure", "Term", "parse_formula", "parse_levels"]
