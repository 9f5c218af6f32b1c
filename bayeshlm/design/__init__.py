"""Numbers for both engines: turn a :class:`~bayeshlm.spec.ModelSpec` and a data frame into a Design."""

from .build import build_design
from .design import Design, DroppedRows, GroupCrossproducts, GroupingFactor, ResidualDesign

__all__ = ["Design", "DroppedRows", "GroupCrossproducts", "GroupingFactor", "ResidualDesign", "build_design"]
