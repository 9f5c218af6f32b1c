"""fit.save / bh.load_fit: every public table survives the round trip; incompatible files fail clearly."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayeshlm as bh
from bayeshlm.bayes import SamplingWarning
from bayeshlm.results import storage
from bayeshlm.results.contract import contract_problems, wide

LIKELIHOOD_TABLES = ("fixed_effects", "variance_components", "vcov", "theta")


def _assert_same_likelihood_fit(a, b):
    assert type(a) is type(b) and a.method == b.method
    for name in LIKELIHOOD_TABLES:
        left, right = getattr(a, name), getattr(b, name)
        (pd.testing.assert_series_equal if isinstance(left, pd.Series) else pd.testing.assert_frame_equal)(left, right)
    for name in a.tau:
        pd.testing.assert_frame_equal(a.tau[name], b.tau[name])
        pd.testing.assert_frame_equal(a.group_effects(name), b.group_effects(name))
        if len(a.design.factors) == 1 or (a.design.chain and a.design.chain[0].name == name):  # where defined
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
def test_bayes_fit_with_draws_the_record_does_not_declare_is_refused(tmp_path):
    """A posterior cut to fewer draws than the sampler record states loaded silently (a different posterior)."""
    import json

    import h5py

    df = bh.datasets.load("eight_schools").assign(V=lambda d: d["sigma"] ** 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        fit = bh.HLM("y ~ 1 + (1 | school)", df, known_variance="V").fit("bayes", draws=60, tune=60, chains=1,
                                                                        random_seed=2)
    path = fit.save(tmp_path / "bayes.nc")
    with h5py.File(path, "a") as f:
        state = json.loads(f.attrs["state"])
        state["sampler"]["draws"] = 100
        f.attrs["state"] = json.dumps(state)
    with pytest.raises(bh.errors.FitFormatError, match=r"is damaged .*'posterior' draws have \{'chain': 1, "
                                                       r"'draw': 60\}, but the sampler record declares "
                                                       r"\{'chain': 1, 'draw': 100\}"):
        bh.load_fit(path)


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


# --- damaged, foreign and crafted files (issue 21): one clear FitFormatError, nothing large read ---------------
@pytest.fixture
def small_save(tmp_path):
    """A small REML fit saved to disk: (fit, path)."""
    rng = np.random.default_rng(8)
    g = np.repeat(np.arange(10), 8)
    df = pd.DataFrame({"y": rng.normal(size=80) + rng.normal(size=10)[g], "x": rng.normal(size=80), "g": g})
    fit = bh.HLM("y ~ x + (x | g)", df).fit()
    return fit, fit.save(tmp_path / "small.nc")


def _edit_attribute(path, name, value):
    import h5py

    with h5py.File(path, "a") as f:
        f.attrs[name] = value


@pytest.mark.parametrize("damage, message", [
    ("truncated", r"is not a netCDF file written by fit.save"),
    ("random bytes", r"is not a netCDF file written by fit.save"),
    ("text", r"is not a netCDF file written by fit.save"),
    ("netCDF3 from another program", r"is not a netCDF file written by fit.save"),
    ("netCDF4 from another program", r"has no bayeshlm format version"),
    ("spec not JSON", r"is damaged .*'spec' attribute is not valid JSON"),
    ("state not JSON", r"is damaged .*'state' attribute is not valid JSON"),
    ("state a JSON list", r"is damaged .*'state' attribute is not a JSON object"),
    ("spec missing a key", r"is damaged .*KeyError: 'outcome'"),
    ("format version text", r"is damaged .*format version 'one' is not a number"),
    ("engine unknown", r"is damaged .*engine 'magic' is neither"),
    ("theta too short", r"is damaged .*saved theta has 2 values .* this model has 3 variance parameters"),
    ("theta not finite", r"is damaged .*saved theta has 3 values \(finite: False\)"),
    ("X with a column too many", r"is damaged .*'X' has shape \(80, 3\), but the saved names declare \(80, 2\)"),
])
def test_damaged_or_foreign_file_is_one_clear_error(small_save, tmp_path, damage, message):
    import h5py

    fit, path = small_save
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "random bytes":
        path.write_bytes(np.random.default_rng(1).bytes(5000))
    elif damage == "text":
        path.write_text("y,x,g\n1,2,3\n")
    elif damage.startswith("netCDF"):
        engine = "scipy" if damage.startswith("netCDF3") else "h5netcdf"
        path.unlink()
        xr.Dataset({"a": ("x", [1.0, 2.0])}, attrs={"title": "other"}).to_netcdf(path, engine=engine)
    elif damage == "spec not JSON":
        _edit_attribute(path, "spec", "{not json")
    elif damage == "state not JSON":
        _edit_attribute(path, "state", "")
    elif damage == "state a JSON list":
        _edit_attribute(path, "state", "[1, 2]")
    elif damage == "spec missing a key":
        _edit_attribute(path, "spec", "{}")
    elif damage == "format version text":
        _edit_attribute(path, "format_version", "one")
    elif damage == "engine unknown":
        _edit_attribute(path, "engine", "magic")
    elif damage.startswith("theta"):
        import json

        state = json.loads(h5py.File(path, "r").attrs["state"])
        state["theta"] = state["theta"][:2] if damage == "theta too short" else [1.0, float("nan"), 0.5]
        _edit_attribute(path, "state", json.dumps(state))
    else:
        with h5py.File(path, "a") as f:
            X = f["design/X"][()]
            del f["design/X"]
            f["design"].create_dataset("X", data=np.column_stack([X, X[:, 1]]))
    with pytest.raises(bh.errors.FitFormatError, match=message):
        bh.load_fit(path)


@pytest.mark.parametrize("how", ["extra array never written", "compressed array replacing y"])
def test_crafted_file_declaring_a_huge_array_is_refused_before_reading_it(small_save, how):
    """A 400 MB array in a file of well under 1 MB (unwritten HDF5 data, or zeros compressed): the old loader
    read it all (tracemalloc peak about 400 MB); now the layout check refuses it and the peak stays small."""
    import tracemalloc

    import h5py

    fit, path = small_save
    with h5py.File(path, "a") as f:
        if how == "extra array never written":
            f["design"].create_dataset("junk", shape=(50_000_000,), dtype="f8", chunks=True)
        else:
            del f["design/y"]
            f["design"].create_dataset("y", shape=(50_000_000,), dtype="f8", chunks=(1_000_000,),
                                       compression="gzip", fillvalue=0.0)
            f["design/y"][:1_000_000] = 0.0
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(bh.errors.FitFormatError, match=r"its arrays would take 38\d MB in memory"):
            bh.load_fit(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_long_text_in_a_short_file_is_measured_before_it_is_read(small_save):
    """Variable-length text becomes fixed-width Unicode in memory: 80 labels, one of 200,000 characters, would take
    64 MB; the file holds well under 1 MB."""
    import h5py

    fit, path = small_save
    labels = np.array(["r"] * 79 + ["x" * 200_000], dtype=object)
    with h5py.File(path, "a") as f:
        del f["design/row_labels"]
        f["design"].create_dataset("row_labels", data=labels, dtype=h5py.string_dtype())
    with pytest.raises(bh.errors.FitFormatError, match=r"its arrays would take 6\d MB in memory"):
        bh.load_fit(path)


# --- saving: atomic replacement ----------------------------------------------------------------------------------
def test_failed_save_leaves_the_earlier_file_intact_and_no_temporary_file(small_save, monkeypatch):
    fit, path = small_save
    before = path.read_bytes()

    def fail_halfway(f, data):
        f.write(data[: len(data) // 2])
        f.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "_write_bytes", fail_halfway)
    with pytest.raises(bh.errors.SaveError, match=r"could not write .*small.nc' \(No space left on device\); the "
                                                  r"earlier file there is unchanged"):
        fit.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["small.nc"]
    pd.testing.assert_series_equal(bh.load_fit(path).theta, fit.theta)


def test_save_on_a_full_disk_raises_and_the_process_carries_on(small_save, tmp_path):
    """A full disk, simulated by a file-size limit (RLIMIT_FSIZE with SIGXFSZ ignored: writes past it fail with
    EFBIG): a clear SaveError, the earlier file unchanged, and the process exits normally (it used to crash)."""
    import subprocess
    import sys

    fit, path = small_save
    before = path.read_bytes()
    script = f"""
import resource, signal, numpy as np, pandas as pd, bayeshlm as bh
rng = np.random.default_rng(2)
g = np.repeat(np.arange(200), 50)
df = pd.DataFrame({{"y": rng.normal(size=10000), "x": rng.normal(size=10000), "g": g}})
fit = bh.HLM("y ~ x + (x | g)", df).fit()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    fit.save({str(path)!r})
except bh.errors.SaveError as err:
    print("SaveError:", err)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "SaveError: fit.save: could not write" in run.stdout and "earlier file there is unchanged" in run.stdout
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["small.nc"]


def test_save_into_a_missing_folder_or_onto_a_folder_is_a_clear_error(small_save, tmp_path):
    fit, _ = small_save
    with pytest.raises(bh.errors.SaveError, match=r"cannot create a file in .*absent"):
        fit.save(tmp_path / "absent" / "fit.nc")
    with pytest.raises(bh.OptionError, match=r"is a folder; give a file name"):
        fit.save(tmp_path)


def test_a_fit_made_with_unsafe_formula_loads_only_when_asked(tmp_path):
    """Loading re-checks the saved formula terms: a file cannot smuggle in what a model file may not say, and
    the user who opted out when fitting opts out again when loading (nothing is evaluated either way)."""
    data = bh.datasets.load("sleepstudy")
    fit = bh.HLM("Reaction ~ np.log1p(Days) + (1 | Subject)", data, unsafe_formula=True).fit("reml")
    path = fit.save(tmp_path / "unsafe.nc")
    with pytest.raises(storage.FitFormatError, match=r"outside the allow-list.*load_fit\(path, unsafe_formula=True\)"):
        bh.load_fit(path)
    loaded = bh.load_fit(path, unsafe_formula=True)
    np.testing.assert_allclose(loaded.fixed_effects["estimate"], fit.fixed_effects["estimate"], rtol=1e-12)


# --- files written before the result contract (issue 22) ---------------------------------------------------
SAVED_V1 = Path(__file__).parent / "reference" / "saved_fits"


@pytest.mark.parametrize("name", ["sleepstudy_reml_v1", "sleepstudy_ar1_ml_v1", "sleepstudy_bayes_v1"])
def test_files_saved_before_the_result_contract_still_load(name):
    """Format-version-1 files written by bayeshlm at a435cdd (tests/reference/saved_fits/make_saved_fits.py) load
    through the engines' from_state, with the numbers that version reported and the contract's tables."""
    expected = json.loads((SAVED_V1 / "saved_fits_v1.json").read_text())[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        fit = bh.load_fit(SAVED_V1 / f"{name}.nc")
    np.testing.assert_allclose(fit.fixed_effects["estimate"], expected["estimate"], rtol=1e-9)
    np.testing.assert_allclose(fit.fixed_effects["se"], expected["se"], rtol=1e-9)
    np.testing.assert_allclose(fit.tau["Subject"].to_numpy().ravel(), expected["tau"], rtol=1e-9)
    assert fit.sigma2 == pytest.approx(expected["sigma2"], rel=1e-9)
    np.testing.assert_allclose(wide(fit.group_effects()).to_numpy().ravel(), expected["group_coef"], rtol=1e-9)
    for kind in ("fixed_effects", "variance_components"):
        assert contract_problems(kind, getattr(fit, kind)) == []
    assert contract_problems("random_effects", fit.random_effects(), "Subject") == []


def test_storage_reads_fits_only_through_their_public_state():
    """save/load go through to_state / from_state: storage.py reads no private attribute of a fit (it read
    _theta and _chol before)."""
    source = Path(storage.__file__).read_text()
    assert "fit._" not in source and "._theta" not in source and "._chol" not in source
