import numpy as np
import pytest

import bayeshlm as bh


def test_catalogue_lists_every_bundled_dataset_with_source():
    catalogue = bh.datasets.list()
    assert {"hsb", "egsingle", "scotssec", "sleepstudy", "oxboys", "exam", "early", "contraception",
            "teacher_expectancy", "sat_coaching", "berkey", "konstantopoulos", "eight_schools"} <= set(catalogue.index)
    assert catalogue["source"].str.len().min() > 5


@pytest.mark.parametrize("name", list(bh.datasets.list().index))
def test_every_dataset_loads_as_a_fresh_frame(name):
    first = bh.datasets.load(name)
    first.iloc[0, 0] = None
    assert bh.datasets.load(name).iloc[0, 0] is not None  # a new copy each call


def test_hsb_in_the_books_form(hsb):
    # R&B (2002) Table 4.1 and section 3.2 of the digest: N = 7,185, J = 160, 70 Catholic schools.
    assert hsb.shape[0] == 7185
    assert hsb["school"].nunique() == 160
    schools = hsb.groupby("school").first()
    assert schools["sector"].sum() == 70
    assert schools["meanses"].mean() == pytest.approx(0.0, abs=1e-12)  # centred over the 160 schools
    assert schools["meanses"].std() == pytest.approx(0.414, abs=0.001)
    assert hsb["mathach"].mean() == pytest.approx(12.748, abs=0.001)
    np.testing.assert_allclose(hsb.groupby("school")["cses"].mean(), 0.0, atol=1e-12)
    # Table 4.6: school 8367 (case 135) has MEAN SES 0.032 after centring, and is public
    assert schools.loc["8367", "meanses"] == pytest.approx(0.032, abs=0.0006)
    assert schools.loc["1308", "sector"] == 1


def test_teacher_expectancy_caps_weeks_at_three():
    frame = bh.datasets.load("teacher_expectancy")
    assert frame["weeks_c"].max() == 3
    assert (frame["weeks_c"] == frame["weeks"].clip(upper=3)).all()


def test_unknown_dataset_suggests_names():
    with pytest.raises(bh.OptionError, match="Did you mean 'sleepstudy'"):
        bh.datasets.load("sleepstudi")
