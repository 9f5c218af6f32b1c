"""fit.save / bh.load_fit: every public table survives the round trip; incompatible files fail clearly."""

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayeshlm as bh
from bayeshlm.bayes import SamplingWarning
from bayeshlm.results import storage

LIKELIHOOD_TABLES = ("fixed_effects", "variance_components", "vcov", "theta")


def _assert_same_likelihood_fit(a, b):
    assert type(a) is type(b) and a.method == b.method
    for name in LIKELIHOOD_TABLES:
        left, right = getattr(a, name), getattr(b, name)
        (pd.testing.assert_series_equal if isinstance(left, pd.Series) else pd.testing.assert_frame_equal)(left, right)
    for name in a.tau:
        pd.testing.assert_frame_equal(a.tau[name], b.tau[name])
        pd.testing.assert_frame_equal(a.group_effects(name), b.group_effects(name))
        pd.testing.assert_frame_equal(a.ols_group_estimates(name), b.ols_group_estimates(name))
    assert a.sigma2 == b.sigma2 and a.deviance == b.deviance and a.aic == b.aic
    assert (a.converged, a.optimizer_message, a.n_evaluations, a.messages) == \
        (b.converged, b.optimizer_message, b.n_evaluations, b.messages)
    assert a.design.row_labels.equals(b.design.row_labels)
    assert a.design.spec == b.design.spec and a.design.spec.formula() == b.design.spec.formula()
    assert str(a.design.dropped) == str(b.design.dropped)
    assert a.design.summary() == b.design.summary()


def test_reml_fit_round_trips_every_table(hsb, tmp_path):
    model = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb)
    fit = model.fit()
    loaded = bh.load_fit(fit.save(tmp_path / "hsb.nc"))
    _assert_same_likelihood_fit(fit, loaded)
    assert loaded.report().__str__() == fit.report().__str__()


def test_ml_fit_with_centring_missing_rows_and_text_labels_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(12), 6)
    df = pd.DataFrame({"y": rng.normal(size=72) + rng.normal(size=12)[g], "x": rng.normal(size=72),
                       "g": [f"unit {k}" for k in g]}, index=[f"r{i}" for i in range(72)])
    df.loc[["r3", "r40"], "x"] = np.nan
    fit = bh.HLM("y ~ x + (1 | g)", df, center={"x": "group"}, group_means=["x"]).fit("ml")
    loaded = bh.load_fit(fit.save(tmp_path / "ml.nc"))
    _assert_same_likelihood_fit(fit, loaded)
    assert loaded.design.dropped.count == 2 and list(loaded.design.row_labels[:3]) == ["r0", "r1", "r2"]


def test_v_known_and_three_level_fits_round_trip(tmp_path):
    meta = bh.datasets.load("eight_schools").assign(V=lambda d: d["sigma"] ** 2)
    rng = np.random.default_rng(5)
    a, b = np.repeat(np.arange(6), 12), np.repeat(np.arange(24), 3)
    nested = pd.DataFrame({"y": rng.normal(size=72) + rng.normal(size=6)[a] + rng.normal(size=24)[b],
                           "a": a, "b": b})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # boundary fits are part of the record, not the point here
        fits = [bh.HLM("y ~ 1 + (1 | school)", meta, known_variance="V").fit(),
                bh.HLM("y ~ 1 + (1 | a/b)", nested).fit()]
    for k, fit in enumerate(fits):
        _assert_same_likelihood_fit(fit, bh.load_fit(fit.save(tmp_path / f"fit{k}.nc")))


def test_incompatible_or_foreign_files_fail_clearly(hsb, tmp_path, monkeypatch):
    fit = bh.HLM("mathach ~ ses + (1 | school)", hsb).fit()
    path = fit.save(tmp_path / "fit.nc")
    monkeypatch.setattr(storage, "FORMAT_VERSION", storage.FORMAT_VERSION + 1)
    with pytest.raises(storage.FitFormatError, match=r"uses save format 1 \(written by bayeshlm .*\), but this "
                                                     r"bayeshlm .* reads format 2"):
        bh.load_fit(path)
    monkeypatch.undo()
    xr.Dataset({"a": ("x", [1.0])}).to_netcdf(tmp_path / "other.nc", engine="h5netcdf")
    with pytest.raises(bh.InputError, match="no bayeshlm format version"):
        bh.load_fit(tmp_path / "other.nc")
    (tmp_path / "text.nc").write_text("not a netCDF file")
    with pytest.raises(bh.InputError, match="is not a netCDF file written by fit.save"):
        bh.load_fit(tmp_path / "text.nc")
    with pytest.raises(bh.OptionError, match="no file"):
        bh.load_fit(tmp_path / "absent.nc")


@pytest.mark.sampling
def test_bayes_fit_round_trips_draws_summaries_and_records(tmp_path):
    df = bh.datasets.load("eight_schools").assign(V=lambda d: d["sigma"] ** 2)
    model = bh.HLM("y ~ 1 + (1 | school)", df, known_variance="V")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)  # few draws: only the round trip matters
        fit = model.fit("bayes", draws=100, tune=100, chains=2, random_seed=4)
    loaded = bh.load_fit(fit.save(tmp_path / "bayes.nc"))
    for group in fit.posterior.children:
        xr.testing.assert_identical(fit.posterior[group].to_dataset(), loaded.posterior[group].to_dataset())
    pd.testing.assert_frame_equal(fit.fixed_effects, loaded.fixed_effects)
    pd.testing.assert_frame_equal(fit.variance_components, loaded.variance_components)
    pd.testing.assert_frame_equal(fit.group_effects(), loaded.group_effects())
    pd.testing.assert_frame_equal(fit.plausible_values(), loaded.plausible_values())
    pd.testing.assert_frame_equal(fit.tau["school"], loaded.tau["school"])
    assert (loaded.priors, loaded.sampler, loaded.diagnostics, loaded.messages) == \
        (fit.priors, fit.sampler, fit.diagnostics, fit.messages)
    assert loaded.summary() == fit.summary()
    assert {v.name for v in loaded.pymc_model().free_RVs} == {v.name for v in fit.pymc_model().free_RVs}
