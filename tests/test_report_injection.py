"""The report on the injection stage's REAL outputs (closure.json, completeness.parquet as `stronglens.injection` writes
them on its own synthetic run): the threshold is inherited, table 6 is the lookup table, unmeasured closure tests and
probes are said so, not silently skipped."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stronglens.report import ReportConfig, build_report, load_report_inputs, synthetic_run
from stronglens.tables import COMPLETENESS_COLUMNS, SNR_TARGET_COLUMNS

injection = pytest.importorskip("stronglens.injection")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-injection")
    inj_run = str(tmp / "inj")
    icfg = injection.synthetic_stage_run(inj_run, n=20, seed=0, injection={"n_per_cell": 2, "n_workers": 1, "closure_k_neighbours": 5})
    injection.run_inject_stage(icfg, inj_run, progress=False, scorer={"kind": "oracle", "snr_cut": 6.0})
    run = tmp / "run"
    synthetic_run(str(run), n=240, seed=5)
    for f in ("closure.json", "completeness.parquet", "completeness.csv"):      # the real writer's files replace the synthetic ones
        shutil.copy(Path(inj_run) / "injection" / f, run / "injection" / f)
    rep = build_report(load_report_inputs(str(run)), str(tmp / "r"), ReportConfig(), log=lambda m: None)
    return run, tmp / "r", rep


@pytest.mark.slow
def test_threshold_inherited_from_the_real_closure(built):
    run, out, rep = built
    th = json.loads((run / "injection/closure.json").read_text())["threshold"]
    assert rep["threshold"]["value"] == th["value"] and rep["threshold"]["source"] == "injection"
    assert f"FPR {th['target']:g} on the {th['split']} negatives" in rep["threshold"]["how"] and not rep["threshold"]["set_on_eval_split"]
    sc = pd.read_parquet(run / "model/scores_all.parquet"); neg = sc[(sc.split == "test") & (sc.label == 0)]
    assert rep["threshold"]["n_flagged"] == int((neg.p_lens >= th["value"]).sum())


@pytest.mark.slow
def test_table6_is_the_real_lookup_table(built):
    run, out, rep = built
    comp = pd.read_parquet(run / "injection/completeness.parquet")
    t6 = pd.read_csv(out / rep["tables"]["table6_selection_function"]["csv"], keep_default_na=False, na_values=[""])
    cols = COMPLETENESS_COLUMNS + [c for c in SNR_TARGET_COLUMNS if c in comp.columns]
    assert len(t6) == len(comp) == 385 and list(t6.columns) == cols and "completeness_snr_target" in cols
    key = ["i_theta_e", "i_psf", "i_depth"]
    a, b = t6.set_index(key).sort_index(), comp.set_index(key).sort_index()
    num = [c for c in cols if c not in key + ["empty_reason"]]
    np.testing.assert_array_equal(a[num].to_numpy(float), b[num].to_numpy(float))
    assert rep["figures"]["fig3_selection_function"]["n_panels"] >= 3 and (out / "figures/fig3_selection_function.png").stat().st_size > 10_000


@pytest.mark.slow
def test_unmeasured_closure_and_probe_are_said_so(built):
    run, out, rep = built
    doc = json.loads((run / "injection/closure.json").read_text())
    assert doc["measured_recall"] is None and not np.isfinite(doc["feature_probe"]["auc"])      # the oracle: no Tier-A targets, no features
    amber = [m for lvl, m in rep["alerts"] if lvl == "amber"]
    assert any("Closure test on Tier-A lenses not measured" in m and doc["tier_a"]["status"] in m for m in amber)
    assert any("Feature probe not run" in m and "no features" in m for m in amber)
    page = (out / "index.html").read_text()
    assert "Closure test on Tier-A lenses not measured" in page[:page.index("<h2>")]
