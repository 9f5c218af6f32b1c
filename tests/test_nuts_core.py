"""bayes.nuts: nutpie's sampler core driven without nutpie's Python front end gives the draws and sample statistics
of ``nutpie.sample`` bit for bit, and a kernel fit then loads neither nutpie's package nor arviz's plotting."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import bayeshlm as bh
from bayeshlm.bayes import glmm_kernel, nuts, sampling

pytestmark = pytest.mark.sampling


def _captured_model(model, **options):
    """The CallbackModel a fit hands to the sampler (the fit itself is stopped there)."""
    captured = {}

    def capture(compiled, **_):
        captured["model"] = compiled
        raise StopIteration

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sampling, "sample_nutpie", capture)
        with pytest.raises(StopIteration):
            model.fit(method="bayes", draws=20, tune=20, chains=1, random_seed=1, **options)
    return captured["model"]


@pytest.fixture(scope="module")
def cbpp_model():
    data = bh.datasets.load("cbpp")
    model = bh.HLM("cbind(incidence, size - incidence) ~ period + (1 | herd)", data, family="binomial")
    return _captured_model(model)


@pytest.fixture(scope="module")
def sleep_model():
    model = bh.HLM("Reaction ~ Days + (Days | Subject)", bh.datasets.load("sleepstudy"))
    return _captured_model(model)


def _assert_same_tree(expected, got):
    assert sorted(expected.children) == sorted(got.children)
    for group in expected.children:
        a, b = expected[group].to_dataset(), got[group].to_dataset()
        assert sorted(a.data_vars) == sorted(b.data_vars), group
        assert sorted(a.coords) == sorted(b.coords), group
        for name in a.variables:
            x, y = a[name], b[name]
            assert x.dims == y.dims and x.dtype == y.dtype, (group, name)
            if x.dtype == object:  # text statistics: None or NaN where there is no message
                assert [str(v) for v in x.values.ravel()] == [str(v) for v in y.values.ravel()], (group, name)
            else:
                np.testing.assert_array_equal(x.values, y.values, err_msg=f"{group}/{name}")


@pytest.mark.parametrize("which", ["cbpp_model", "sleep_model"])
def test_core_draws_equal_nutpie_sample_bitwise(which, request):
    import nutpie

    model = request.getfixturevalue(which)
    assert isinstance(model, nuts.CallbackModel)
    options = {"draws": 60, "tune": 60, "chains": 2, "cores": 2, "seed": 11, "target_accept": 0.9}
    public = nutpie.sample(nuts.public_model(model), progress_bar=False, **options)
    direct = nuts.sample(model, progressbar=False, **options)
    _assert_same_tree(public, direct)
    without_warmup = nuts.sample(model, progressbar=False, warmup=False, **options)
    assert sorted(without_warmup.children) == ["posterior", "sample_stats"]
    np.testing.assert_array_equal(without_warmup["posterior"][model.names[0]].values,
                                  direct["posterior"][model.names[0]].values)


def test_an_unchecked_nutpie_release_goes_through_nutpie_sample_with_the_same_draws(cbpp_model, monkeypatch):
    options = {"draws": 40, "tune": 40, "chains": 2, "cores": 2, "seed": 3, "target_accept": 0.9,
               "progressbar": False}
    direct = sampling.sample_nutpie(cbpp_model, **options)
    monkeypatch.setattr(nuts, "version", lambda name: "0.16.0")
    nuts.core.cache_clear()
    try:
        assert nuts.core() is None and not nuts.use_core(False)
        public = sampling.sample_nutpie(cbpp_model, **options)
    finally:
        nuts.core.cache_clear()
    _assert_same_tree(public, direct)


def test_missing_entries_and_short_chains_are_padded_as_nutpie_does():
    """A text statistic with gaps, a float column with a missing row, and one chain cut short (an interrupt)."""
    def chain(rows, message):
        return pa.RecordBatch.from_pydict({
            "tuning": pa.array([True] + [False] * (rows - 1)),
            "energy": pa.array([1.0, None] + [2.0] * (rows - 2), pa.float64()),
            "divergence_message": pa.array([None] * (rows - 1) + [message], pa.string()),
            "n_steps": pa.array(np.arange(rows, dtype=np.uint64)),
        })
    stats = [chain(5, "step size"), chain(4, "energy")]
    draws = [pa.RecordBatch.from_pydict({"theta": pa.array(np.arange(rows, dtype=float))}) for rows in (5, 4)]
    tree = nuts.arrow_tree(draws, stats, {}, set(), warmup=True)
    posterior, sample_stats = tree["posterior"].to_dataset(), tree["sample_stats"].to_dataset()
    np.testing.assert_array_equal(posterior["theta"].values, [[1, 2, 3, 4], [1, 2, 3, np.nan]])
    np.testing.assert_array_equal(sample_stats["energy"].values, [[np.nan, 2, 2, 2], [np.nan, 2, 2, np.nan]])
    messages = [[text if isinstance(text, str) else None for text in row]  # xarray stores the gaps as NaN
                for row in sample_stats["divergence_message"].values]
    assert messages == [[None, None, None, "step size"], [None, None, "energy", None]]
    assert sample_stats["n_steps"].values.tolist() == [[1, 2, 3, 4], [1, 2, 3, 0]]
    assert tree["warmup_posterior"]["theta"].values.tolist() == [[0.0], [0.0]]


def test_an_hglm_fit_on_the_extension_loads_neither_nutpie_python_package_nor_arviz_nor_numba():
    code = ("import sys, bayeshlm as bh\n"
            "data = bh.datasets.load('cbpp')\n"
            "fit = bh.HLM('cbind(incidence, size - incidence) ~ period + (1 | herd)', data,"
            " family='binomial').fit('bayes', draws=30, tune=30, chains=2, random_seed=1)\n"
            "assert fit.sampler['log_density'].startswith('compiled HGLM kernel')\n"
            "print(sorted(m for m in ('nutpie', 'nutpie._lib', 'arviz', 'arviz_plots', 'matplotlib', 'pymc', 'numba')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['nutpie._lib']"


def test_a_two_level_gaussian_fit_on_the_extension_loads_neither_nutpie_python_package_nor_arviz_nor_numba():
    """The two-level kernel and its group-effect draws are the extension's, so the Numba twins
    (kernel_numba, marginal_numba) are not imported."""
    code = ("import sys, bayeshlm as bh\n"
            "from bayeshlm.bayes.kernel import c_callbacks, extension_callbacks\n"
            "fit = bh.HLM('Reaction ~ Days + (Days | Subject)', bh.datasets.load('sleepstudy'))"
            ".fit('bayes', draws=30, tune=30, chains=2, random_seed=1)\n"
            "assert fit.sampler['log_density'] == 'compiled kernel'\n"
            "assert c_callbacks(1, False) is extension_callbacks() is not None\n"
            "print(sorted(m for m in ('nutpie', 'nutpie._lib', 'arviz', 'arviz_plots', 'matplotlib', 'pymc', 'numba',"
            " 'bayeshlm.bayes.kernel_numba', 'bayeshlm.bayes.marginal_numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['nutpie._lib']"


def test_glmm_kernel_model_describes_the_kernel_layout(cbpp_model):
    assert cbpp_model.names == ("beta", "tau_herd", "u_herd", "z_herd")
    assert cbpp_model.n_expanded == sum(int(np.prod(shape)) for shape in cbpp_model.shapes)
    assert cbpp_model.logp_address == glmm_kernel.callbacks()[0].address


def test_nutpie_imported_after_the_core_reuses_the_loaded_extension():
    """The extension is initialised once per process: a later ``import nutpie`` (a PyMC-graph fit) finds it."""
    code = ("import sys\n"
            "from bayeshlm.bayes import nuts\n"
            "lib = nuts.core()\n"
            "assert lib is not None and 'nutpie' not in sys.modules\n"
            "import nutpie\n"
            "print(nutpie._lib is lib)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
