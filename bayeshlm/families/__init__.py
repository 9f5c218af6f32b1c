"""Outcome families and their links (R&B 2002, ch. 10): one module per family, one registration line each.

>>> from bayeshlm.families import get_family
>>> get_family("binomial", "probit").equation()
'eta = Phi^-1(phi)'
"""

from __future__ import annotations

from ..errors import OptionError, closest_names
from .base import Family
from .bernoulli import Bernoulli
from .binomial import Binomial
from .gaussian import Gaussian
from .links import LINKS, Link
from .negative_binomial import NegativeBinomial
from .poisson import Poisson

FAMILIES: dict[str, type[Family]] = {
    "gaussian": Gaussian,
    "bernoulli": Bernoulli,
    "binomial": Binomial,
    "poisson": Poisson,
    "negative_binomial": NegativeBinomial,
}


def get_family(name: str | Family | None, link: str | None = None) -> Family:
    """The family object for ``name`` ('gaussian' when None) with ``link`` (the family's default when None)."""
    if isinstance(name, Family):
        if link is not None and link != name.link.name:
            raise OptionError(f"link={link!r} conflicts with the family object's link {name.link.name!r}.")
        return name
    if name is None:
        name = "gaussian"
    if name not in FAMILIES:
        raise OptionError(f"family={name!r} is not available.{closest_names(str(name), FAMILIES)} "
                          f"Use one of: {', '.join(FAMILIES)}.")
    return FAMILIES[name](link)


__all__ = ["FAMILIES", "LINKS", "Bernoulli", "Binomial", "Family", "Gaussian", "Link", "NegativeBinomial", "Poisson",
           "get_family"]
