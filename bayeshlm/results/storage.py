"""Save a fit to netCDF and load it back: ``fit.save(path)`` and ``bayeshlm.load_fit(path)``.

One file holds an xarray DataTree:

- root attributes: ``bayeshlm_version``, ``format_version``, ``engine`` ('likelihood' or 'bayes'), the model
  specification (``spec``, JSON: formula terms, centring, group means, known-variance column, level-1 error
  structure) and the engine state (``state``, JSON);
- ``/design``: the Design's arrays (y, X, known variances, row labels, dropped rows) with its names in
  attributes, and ``/design/factor_<k>`` (codes, levels, Z) and ``/design/residual`` below it;
- likelihood fits: theta, the method and the optimiser's record in ``state``. Loading rebuilds the fit from
  the saved Design and theta by evaluating the criterion once, so every table is the one that was saved;
- Bayesian fits: ``/bayes/<group>`` for each group of the posterior DataTree (posterior, sample_stats, ...),
  ``/cholesky`` (the per-draw Cholesky factors of each T), and the priors, sampler record, diagnostics and
  messages in ``state``. Loading rebuilds the PyMC model from the saved Design and priors (for
  ``pymc_model()`` and prior predictive checks) without sampling.

A file whose ``format_version`` differs from :data:`FORMAT_VERSION` is refused with an error naming both
versions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..design import Design, DroppedRows, GroupingFactor
from ..errors import InputError, OptionError
from ..spec import Centering, ModelSpec
from ..spec.model_spec import RandomTerm

FORMAT_VERSION = 1
ENGINE = "h5netcdf"


class FitFormatError(InputError):
    """A saved fit cannot be read by this version of bayeshlm."""


def save_fit(fit, path: str | Path) -> Path:
    """Write ``fit`` (a LikelihoodFit or BayesFit) to ``path`` as netCDF; return the path."""
    from .. import __version__
    from ..bayes.result import BayesFit
    from ..likelihood.result import LikelihoodFit

    if isinstance(fit, LikelihoodFit):
        engine, state, groups = "likelihood", _likelihood_state(fit), {}
    elif isinstance(fit, BayesFit):
        engine, state, groups = "bayes", _bayes_state(fit), _bayes_groups(fit)
    else:
        raise OptionError(f"Saving a {type(fit).__name__} is not supported; save() takes a REML/ML or Bayes fit.")
    root = xr.Dataset(attrs={"bayeshlm_version": __version__, "format_version": FORMAT_VERSION, "engine": engine,
                             "spec": json.dumps(_spec_to_dict(fit.design.spec)),
                             "state": json.dumps(state, default=_plain)})
    tree = xr.DataTree.from_dict({"/": root, **_design_groups(fit.design), **groups})
    path = Path(path)
    tree.to_netcdf(path, engine=ENGINE)
    return path


def load_fit(path: str | Path):
    """Read a fit written by :func:`save_fit` (``fit.save``); returns a LikelihoodFit or a BayesFit."""
    from .. import __version__

    path = Path(path)
    if not path.exists():
        raise OptionError(f"load_fit: no file {str(path)!r}.")
    try:
        tree = xr.open_datatree(path, engine=ENGINE).load()
    except (OSError, ValueError) as err:
        raise FitFormatError(f"load_fit: {str(path)!r} is not a netCDF file written by fit.save ({err}).") from None
    attrs = tree.attrs
    if "format_version" not in attrs:
        raise FitFormatError(f"load_fit: {str(path)!r} has no bayeshlm format version; it was not written by "
                             "fit.save.")
    saved = int(attrs["format_version"])
    if saved != FORMAT_VERSION:
        raise FitFormatError(
            f"load_fit: {str(path)!r} uses save format {saved} (written by bayeshlm {attrs.get('bayeshlm_version')})"
            f", but this bayeshlm {__version__} reads format {FORMAT_VERSION}. Load it with the version that wrote "
            "it and refit, or refit from the data.")
    design = _design_from_tree(tree, _spec_from_dict(json.loads(attrs["spec"])))
    state = json.loads(attrs["state"])
    if attrs["engine"] == "likelihood":
        return _likelihood_from_state(design, state)
    return _bayes_from_tree(design, state, tree)


def _plain(value):
    """JSON form of the NumPy scalars and arrays found in sampler records and diagnostics."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a saved fit")


# --- model specification ---------------------------------------------------------------------------------

def _spec_to_dict(spec: ModelSpec) -> dict:
    r = spec.residual
    return {
        "outcome": spec.outcome,
        "fixed": [list(t) for t in spec.fixed],
        "random": [{"group": t.group, "group_columns": list(t.group_columns), "terms": [list(x) for x in t.terms],
                    "correlated": t.correlated} for t in spec.random],
        "centering": [{"column": c.column, "how": c.how, "group": c.group} for c in spec.centering],
        "group_means": [list(g) for g in spec.group_means],
        "known_variance": spec.known_variance,
        "notation": spec.notation,
        "level_predictors": [list(p) for p in spec.level_predictors],
        "residual": None if r is None else {"variance_by": r.variance_by, "variance_formula": r.variance_formula,
                                            "correlation": r.correlation, "time": r.time},
    }


def _spec_from_dict(d: dict) -> ModelSpec:
    return ModelSpec(
        outcome=d["outcome"],
        fixed=tuple(tuple(t) for t in d["fixed"]),
        random=tuple(RandomTerm(group=t["group"], group_columns=tuple(t["group_columns"]),
                                terms=tuple(tuple(x) for x in t["terms"]), correlated=t["correlated"])
                     for t in d["random"]),
        centering=tuple(Centering(**c) for c in d["centering"]),
        group_means=tuple(tuple(g) for g in d["group_means"]),
        known_variance=d["known_variance"],
        notation=d["notation"],
        level_predictors=tuple(tuple(p) for p in d["level_predictors"]),
        residual=None if d["residual"] is None else _residual_structure(d["residual"]),
    )


def _residual_structure(d: dict):
    from ..spec.model_spec import ResidualStructure

    return ResidualStructure(**d)


# --- design ------------------------------------------------------------------------------------------------

def _labels(index: pd.Index) -> tuple[np.ndarray, str]:
    """Index values as a netCDF-writable array and the dtype to restore (numbers stay numbers, else text)."""
    if pd.api.types.is_integer_dtype(index) or pd.api.types.is_float_dtype(index):
        return index.to_numpy(), str(index.dtype)
    return np.asarray(index.astype(str), dtype=str), "str"


def _index(values: np.ndarray, dtype: str, name) -> pd.Index:
    return pd.Index(values, dtype=dtype, name=name)


def _design_groups(design: Design) -> dict[str, xr.Dataset]:
    rows, rows_dtype = _labels(design.row_labels)
    data = {"y": ("obs", design.y), "X": (("obs", "fixed"), design.X), "row_labels": ("obs", rows),
            "dropped_positions": ("dropped", np.asarray(design.dropped.positions, dtype=np.int64))}
    if design.known_variance is not None:
        data["known_variance"] = ("obs", design.known_variance)
    meta = {
        "fixed_names": list(design.fixed_names), "fixed_terms": [list(t) for t in design.fixed_terms],
        "nesting": design.nesting, "term_levels": design.term_levels,
        "row_labels": {"dtype": rows_dtype, "name": design.row_labels.name},
        "dropped": {"n_input": design.dropped.n_input, "by_column": design.dropped.by_column},
        "factors": [{"name": f.name, "coef_names": list(f.coef_names), "blocks": [list(b) for b in f.blocks],
                     "levels_name": f.levels.name} for f in design.factors],
    }
    groups = {"/design": xr.Dataset(data, attrs={"meta": json.dumps(meta)})}
    for k, f in enumerate(design.factors):
        groups[f"/design/factor_{k}"] = xr.Dataset({
            "codes": ("obs", f.codes.astype(np.int64)), "levels": ("group", _labels(f.levels)[0]),
            "Z": (("obs", "coef"), f.Z)})
    r = design.residual
    if r is not None:
        data, meta = {}, {"C_names": list(r.C_names), "unit": r.unit, "strata_levels_name": None}
        if r.strata is not None:
            data["strata"] = ("obs", r.strata.astype(np.int64))
            data["strata_levels"] = ("stratum", _labels(r.strata_levels)[0])
            meta["strata_levels_name"] = r.strata_levels.name
        if r.C is not None:
            data["C"] = (("obs", "C_column"), r.C)
        if r.time is not None:
            data["time"] = ("obs", r.time)
        groups["/design/residual"] = xr.Dataset(data, attrs={"meta": json.dumps(meta)})
    return groups


def _design_from_tree(tree: xr.DataTree, spec: ModelSpec) -> Design:
    node = tree["design"]
    ds = node.to_dataset()
    meta = json.loads(ds.attrs["meta"])
    factors = []
    for k, f in enumerate(meta["factors"]):
        fd = node[f"factor_{k}"].to_dataset()
        factors.append(GroupingFactor(
            name=f["name"], codes=fd["codes"].values.astype(np.int64),
            levels=_index(fd["levels"].values.astype(str), "str", f["levels_name"]), Z=fd["Z"].values,
            coef_names=tuple(f["coef_names"]), blocks=tuple(tuple(b) for b in f["blocks"])))
    residual = None
    if spec.residual is not None:
        from ..design.design import ResidualDesign

        rd = node["residual"].to_dataset()
        rmeta = json.loads(rd.attrs["meta"])
        residual = ResidualDesign(
            structure=spec.residual,
            strata=rd["strata"].values.astype(np.int64) if "strata" in rd else None,
            strata_levels=(_index(rd["strata_levels"].values.astype(str), "str", rmeta["strata_levels_name"])
                           if "strata_levels" in rd else None),
            C=rd["C"].values if "C" in rd else None, C_names=tuple(rmeta["C_names"]),
            time=rd["time"].values if "time" in rd else None, unit=rmeta["unit"])
    rows = meta["row_labels"]
    row_values = ds["row_labels"].values
    return Design(
        spec=spec, y=ds["y"].values, X=ds["X"].values, fixed_names=tuple(meta["fixed_names"]),
        fixed_terms=tuple(tuple(t) for t in meta["fixed_terms"]), factors=tuple(factors),
        known_variance=ds["known_variance"].values if "known_variance" in ds else None,
        row_labels=_index(row_values.astype(str) if rows["dtype"] == "str" else row_values, rows["dtype"],
                          rows["name"]),
        dropped=DroppedRows(n_input=meta["dropped"]["n_input"], positions=ds["dropped_positions"].values,
                            by_column=meta["dropped"]["by_column"]),
        nesting=meta["nesting"], term_levels=meta["term_levels"], residual=residual)


# --- likelihood fits ----------------------------------------------------------------------------------------

def _likelihood_state(fit) -> dict:
    return {"method": fit.method, "theta": [float(t) for t in fit._theta], "converged": bool(fit.converged),
            "optimizer_message": fit.optimizer_message, "n_evaluations": int(fit.n_evaluations),
            "deviance": fit.deviance, "messages": fit.messages}


def _likelihood_from_state(design: Design, state: dict):
    """Rebuild the fit at the saved theta (one evaluation of the criterion, no optimisation)."""
    from ..likelihood.fit import ProfiledDeviance
    from ..likelihood.result import LikelihoodFit, StructuredFit

    if design.residual is not None:
        from ..likelihood.marginal import StructuredDeviance

        objective, cls = StructuredDeviance(design, state["method"]), StructuredFit
    else:
        objective, cls = ProfiledDeviance(design, state["method"]), LikelihoodFit
    return cls(objective, np.asarray(state["theta"], dtype=float), converged=state["converged"],
               optimizer_message=state["optimizer_message"], n_evaluations=state["n_evaluations"])


# --- Bayesian fits -------------------------------------------------------------------------------------------

def _prior_to_dict(prior) -> dict | None:
    if prior is None:
        return None
    return {"dist": prior.dist, "on": prior.on, "params": {k: v.tolist() for k, v in prior.params.items()}}


def _prior_from_dict(d: dict | None):
    from ..bayes.priors import Prior

    return None if d is None else Prior(d["dist"], on=d["on"], **d["params"])


def _bayes_state(fit) -> dict:
    p = fit.model_info.priors
    priors = {"fixed": {k: _prior_to_dict(v) for k, v in p.fixed.items()}, "sigma": _prior_to_dict(p.sigma),
              "tau": {k: _prior_to_dict(v) for k, v in p.tau.items()},
              "corr": {k: v.eta for k, v in p.corr.items()}, "kind": p.kind}
    return {"priors": priors, "sampler": fit.sampler, "diagnostics": fit.diagnostics, "messages": fit.messages}


def _bayes_groups(fit) -> dict[str, xr.Dataset]:
    groups = {f"/bayes/{name}": node.to_dataset() for name, node in fit.posterior.children.items()}
    chol = {f"L_{name}": (("chain", "draw", f"{name}__row", f"{name}__col"), L) for name, L in fit._chol.items()}
    groups["/cholesky"] = xr.Dataset(chol)
    return groups


def _bayes_from_tree(design: Design, state: dict, tree: xr.DataTree):
    from ..bayes.build import build_model
    from ..bayes.priors import LKJ, PriorSet
    from ..bayes.result import BayesFit

    p = state["priors"]
    priors = PriorSet(fixed={k: _prior_from_dict(v) for k, v in p["fixed"].items()},
                      sigma=_prior_from_dict(p["sigma"]), tau={k: _prior_from_dict(v) for k, v in p["tau"].items()},
                      corr={k: LKJ(eta) for k, eta in p["corr"].items()}, kind=p["kind"])
    sampler = state["sampler"]
    route = sampler["route"]
    parameterization = sampler["parameterization"] if route == "sampled" else None
    model, info = build_model(design, priors, route, parameterization)
    posterior = xr.DataTree.from_dict({name: node.to_dataset() for name, node in tree["bayes"].children.items()})
    chol = {name[2:]: tree["cholesky"][name].values for name in tree["cholesky"].data_vars}
    return BayesFit(design, posterior, info, sampler, state["diagnostics"], state["messages"], model, chol)
