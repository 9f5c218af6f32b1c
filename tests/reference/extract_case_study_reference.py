"""Copy the peer numbers the case studies check against into the package (bayeshlm/datasets/data/
peer_reference.json), so a notebook copied out of the repository still checks them. Run after
make_reference.R or glmm/make_glmm_reference.R; tests/test_case_studies.py fails if the copy and these
fixtures differ."""

import json
from pathlib import Path

HERE = Path(__file__).parent
USED = {"lme4": ("lme4_reference.json", ["egsingle_uncond_reml", "scotssec_reml"]),
        "nlme": ("nlme_reference.json", ["oxboys_lme_ml", "oxboys_lme_ar1_ml", "oxboys_lme_varident_ml"]),
        "glmer": ("glmm/glmm_reference.json",
                  ["cbpp_laplace", "cbpp_agq25", "contraception_intercept", "contraception_urban"])}


def extract() -> dict:
    out = {}
    for peer, (file, models) in USED.items():
        fixture = json.loads((HERE / file).read_text())
        out[peer] = {model: fixture[model] for model in models}
    return out


if __name__ == "__main__":
    target = HERE.parent.parent / "bayeshlm" / "datasets" / "data" / "peer_reference.json"
    target.write_text(json.dumps(extract(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}")
