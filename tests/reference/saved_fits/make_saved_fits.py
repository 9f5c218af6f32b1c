"""Write the saved-fit files that tests/test_storage.py loads to check that files from before the result contract
(format version 1, bayeshlm at commit a435cdd) still load, and the numbers that version reported for them
(saved_fits_v1.json). Run with that version on the path:

    git archive a435cdd bayeshlm | tar -x -C /tmp/old && PYTHONPATH=/tmp/old python make_saved_fits.py
"""

import json
import warnings
from pathlib import Path

import bayeshlm as bh

HERE = Path(__file__).parent
data = bh.datasets.load("sleepstudy")
model = bh.HLM("Reaction ~ Days + (Days | Subject)", data)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the AR(1) fit is a boundary fit; 50 draws give low-ESS notes
    fits = {"sleepstudy_reml_v1": model.fit("reml"),
            "sleepstudy_ar1_ml_v1": bh.HLM("Reaction ~ Days + (Days | Subject)", data, correlation="ar1",
                                           time="Days").fit("ml"),
            "sleepstudy_bayes_v1": model.fit("bayes", draws=50, tune=50, chains=2, random_seed=1)}
numbers = {}
for name, fit in fits.items():
    fit.save(HERE / f"{name}.nc")
    numbers[name] = {"estimate": fit.fixed_effects["estimate"].tolist(), "se": fit.fixed_effects["se"].tolist(),
                     "tau": fit.tau["Subject"].to_numpy().ravel().tolist(), "sigma2": fit.sigma2,
                     "group_coef": fit.group_effects()["coef" if fit.method != "bayes" else slice(None)]
                     .iloc[:, :2].to_numpy().ravel().tolist()}
(HERE / "saved_fits_v1.json").write_text(json.dumps(numbers, indent=1) + "\n")
