"""Import cost: ``import bayeshlm`` and ``bayeshlm --help`` must not load the Bayesian stack or matplotlib
(issue 22); they load on the first Bayesian fit or plot. Each check runs in a fresh interpreter."""

import subprocess
import sys

import pytest

HEAVY = ("pymc", "pytensor", "numba", "nutpie", "matplotlib", "arviz", "arviz_plots", "arviz_stats", "bokeh", "plotly")

PROBE = """
import sys
{code}
loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))
print('loaded:' + ','.join(loaded))
"""


def _heavy_modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)], capture_output=True,
                         text=True, check=True)
    last = out.stdout.strip().splitlines()[-1]
    return [m for m in last.removeprefix("loaded:").split(",") if m]


@pytest.mark.parametrize("code", [
    "import bayeshlm",
    "import bayeshlm as bh; bh.HLM('mathach ~ ses + (1 | school)', bh.datasets.load('hsb')).fit('reml')",
    "from bayeshlm.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
])
def test_light_paths_load_no_bayesian_stack_or_matplotlib(code):
    assert _heavy_modules_after(code) == []


def test_plots_and_bayesian_classes_load_on_first_use():
    assert _heavy_modules_after("import bayeshlm as bh; bh.plots.shrinkage") == ["matplotlib"]
    assert "pymc" in _heavy_modules_after("import bayeshlm as bh; bh.MetaMVBayesFit")


def test_a_fit_on_the_compiled_kernel_loads_no_pymc_until_the_graph_is_asked_for():
    fit = ("import bayeshlm as bh\n"
           "fit = bh.HLM('mathach ~ ses + (1 | school)', bh.datasets.load('hsb')).fit('bayes', draws=50, tune=50, "
           "chains=1, random_seed=1)\n"
           "assert fit.sampler['log_density'] == 'compiled kernel'")
    loaded = _heavy_modules_after(fit)
    assert "nutpie" in loaded and "pymc" not in loaded and "pytensor" not in loaded
    assert "pymc" in _heavy_modules_after(fit + "\nfit.pymc_model()")
