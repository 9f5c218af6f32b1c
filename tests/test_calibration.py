"""The calibration study (benchmarks/calibration.py) at tiny scale: 10 replications of the two-level model.

Nominal 90% intervals of every parameter, pooled, must cover the true values about 90% of the time: the count
of covering intervals must not lie in either 0.1% tail of Binomial(n, 0.9) (n = intervals with a true value to
cover). The pooled indicators are not independent, so the band is a sanity check, not an exact test; the seeds
are fixed, so the outcome is reproducible. That the band has teeth is checked on the likelihood engine,
whose 50% intervals must fall below it. Draws scale with BAYESHLM_TEST_SCALE.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from scipy import stats

pytestmark = pytest.mark.sampling
SCALE = float(os.environ.get("BAYESHLM_TEST_SCALE", "1"))
SCRIPT = Path(__file__).parents[1] / "benchmarks" / "calibration.py"


@pytest.fixture(scope="module")
def calibration():
    spec = importlib.util.spec_from_file_location("benchmarks_calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _in_band(covered, level=0.9, tail=1e-3) -> bool:
    covered = covered.dropna().astype(bool)
    k, n = int(covered.sum()), len(covered)
    return stats.binom.cdf(k, n, level) > tail and stats.binom.sf(k - 1, n, level) > tail


def test_two_level_intervals_cover_at_the_nominal_rate(calibration):
    n = max(100, int(200 * SCALE))
    reps = calibration.run_scenario("two_level", 10, draws=n, tune=n, chains=2)
    assert "error" not in reps or reps["error"].isna().all()
    table = calibration.coverage_table(reps)
    assert set(table["engine"]) == {"likelihood", "bayes"}
    assert len(table) == 2 * len(calibration.SCENARIOS["two_level"].truth)
    for engine, rows in reps.groupby("engine"):
        assert _in_band(rows["covered"]), (engine, rows["covered"].mean())
    too_short = calibration.run_scenario("two_level", 10, level=0.5, engines=("likelihood",))
    assert not _in_band(too_short["covered"])
