"""The `inject` stage on a synthetic run (stage protocol): outputs and schemas, kill and resume, failed hosts, Spark = local."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stronglens.config import load_config
from stronglens.injection import (CellContext, InjectionConfig, LENSPOP_SOURCE_COLOURS, grid_cells, host_table,
                                  run_cells_local, run_inject_stage, run_injection, synthetic_host_run, synthetic_stage_run)
from stronglens.runs import StageError, read_marker, get_stage

ORACLE = {"kind": "oracle", "snr_cut": 6.0}
SMALL = {"n_per_cell": 5, "n_workers": 1, "closure_k_neighbours": 5}
PLAN_INJ = ["galaxy_id", "ra", "dec", "theta_e", "source_mag_r", "magnification", "arc_snr", "detected", "p_lens",
            "i_theta_e", "i_psf", "i_depth", "psf_fwhm", "depth", "host_split", "seed"]
PLAN_TAB = ["i_theta_e", "i_psf", "i_depth", "theta_e", "theta_e_lo", "theta_e_hi", "psf_fwhm", "psf_lo", "psf_hi", "depth",
            "depth_lo", "depth_hi", "n_injected", "n_detected", "completeness", "ci_lower", "ci_upper", "n_hosts", "empty_reason"]
OUTPUTS = ["injections.parquet", "completeness.parquet", "completeness.csv", "completeness_marginals.csv",
           "completeness_vs_snr.csv", "closure.json", "provenance.json", "failed_hosts.parquet", "gallery.npz", "completeness.png",
           "completeness_map.png", "gallery.png"]


def _run(tmp_path, name, **kw):
    run = str(tmp_path / name)
    cfg = synthetic_stage_run(run, n=kw.pop("n", 40), seed=kw.pop("seed", 0), injection={**SMALL, **kw.pop("injection", {})}, **kw)
    return run, cfg


@pytest.mark.slow
def test_stage_writes_the_plan_schemas(tmp_path):
    run, cfg = _run(tmp_path, "a")
    res = run_inject_stage(cfg, run, progress=False, scorer=ORACLE)
    out = Path(run) / "injection"
    for f in OUTPUTS: assert (out / f).exists(), f
    inj = pd.read_parquet(out / "injections.parquet"); tab = pd.read_parquet(out / "completeness.parquet")
    assert list(inj.columns[:len(PLAN_INJ)]) == PLAN_INJ and set(PLAN_TAB) <= set(tab.columns) and len(tab) == 385
    assert (inj.host_split == "test").all() and inj.galaxy_id.str.startswith("syn0_").all()
    pd.testing.assert_frame_equal(pd.read_csv(out / "completeness.csv")[PLAN_TAB[:12]], tab[PLAN_TAB[:12]], check_dtype=False)
    full = tab.n_injected > 0
    assert (tab.n_injected[full] == 5).all() and tab.completeness[~full].isna().all() and (tab.empty_reason[~full] != "").all()
    assert res["n_injections"] == len(inj) == 5 * full.sum() and res["n_cells"] == 385
    doc = json.loads((out / "closure.json").read_text())
    thr = doc["threshold"]
    assert thr["kind"] == "fpr" and thr["fpr"] <= 0.01 and (thr["split"], thr["n_negatives"]) == ("val", 20)   # val negatives
    val = pd.read_parquet(Path(run) / "model" / "scores_all.parquet").query("split == 'val'").p_lens
    assert thr["value"] > val.max() and thr["value"] < 0.5 + 1e-9                   # FPR 1 % of 20 rows: above every val negative
    assert (inj.detected == (inj.p_lens >= thr["value"])).all() and (inj.detected == (inj.arc_snr > 6.0)).all()   # the oracle
    assert doc["tier_a"]["n_targets"] == 0 and doc["feature_probe"]["status"].startswith("the scorer has no features")
    _check_provenance(run, out, doc)
    assert read_marker(run, get_stage("inject"))["status"] == "done"
    again = run_inject_stage(cfg, run, progress=False, scorer=ORACLE)                 # second call: skipped, same result
    assert json.dumps(again, sort_keys=True) == json.dumps(res, sort_keys=True)


def _check_provenance(run, out, doc):
    """provenance.json and every cell's JSON carry the stage's provenance record (issue 17.3) and the audit's check finds
    it; closure.json (shown in the report page) holds only the part two runs of one config share, no commit or time."""
    from stronglens.audit import provenance_check, PROVENANCE_KEYS
    marker = read_marker(run, get_stage("inject"))
    pr = json.loads((out / "provenance.json").read_text())
    assert set(PROVENANCE_KEYS) <= set(pr) and pr["stage"] == "inject" and pr["config_hash"] == marker["config_hash"], pr
    assert pr["inputs"] == marker["inputs"] and pr["seed"] == 0 and pr["seeds"], pr          # run.seed of the synthetic config
    assert doc["provenance"] == {**{k: pr[k] for k in ("stage", "pipeline_version", "config_hash", "seed", "seeds")}, "record": "provenance.json"}
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("cell_*.json"))]
    assert len(cells) == 385 and all(c["provenance"]["config_hash"] == pr["config_hash"] for c in cells)
    row = provenance_check(run).set_index("stage").loc["inject"]
    assert row.record and list(row.missing) == [] and row.json_outputs == 387 and row.json_with_provenance == 387, row


_CHILD = """
import sys
from stronglens.config import load_config
from stronglens.injection import run_inject_stage
run = sys.argv[1]
run_inject_stage(load_config(run + "/config.yaml"), run, progress=False, scorer={"kind": "oracle", "snr_cut": 6.0})
"""


@pytest.mark.slow
def test_kill_and_rerun_gives_identical_tables(tmp_path):
    ref, cfg_ref = _run(tmp_path, "ref")
    run_inject_stage(cfg_ref, ref, progress=False, scorer=ORACLE)
    run, cfg = _run(tmp_path, "killed")
    cells = Path(run) / "injection" / "cells"
    p = subprocess.Popen([sys.executable, "-c", _CHILD, run], start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 600 and len(list(cells.glob("cell_*.json"))) < 40 and p.poll() is None: time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    n_done = len(list(cells.glob("cell_*.json")))
    assert 0 < n_done < 385, n_done                                            # killed mid-grid
    assert read_marker(run, get_stage("inject"))["status"] == "running"
    logs = []
    run_inject_stage(cfg, run, progress=False, scorer=ORACLE)
    m = read_marker(run, get_stage("inject"))
    assert m["status"] == "done" and m["plan"]["action"] == "resume"
    for f in ("injections.parquet", "completeness.parquet", "completeness.csv", "completeness_marginals.csv", "completeness_vs_snr.csv"):
        assert (Path(run) / "injection" / f).read_bytes() == (Path(ref) / "injection" / f).read_bytes(), f


@pytest.mark.slow
def test_failed_hosts_are_recorded_fail_loudly_and_are_retried(tmp_path):
    run, cfg = _run(tmp_path, "bad", n=30, corrupt=["syn0_00003"])               # a host cutout that does not load
    with pytest.raises(StageError, match="host cutouts failed"):                  # 1 of ~30 > run.max_failure_frac 0.01
        run_inject_stage(cfg, run, progress=False, scorer=ORACLE)
    cfg = load_config(Path(run) / "config.yaml", ["run.max_failure_frac=0.1"])
    run_inject_stage(cfg, run, progress=False, scorer=ORACLE)
    out = Path(run) / "injection"
    f = pd.read_parquet(out / "failed_hosts.parquet")
    assert f.galaxy_id.tolist() == ["syn0_00003"] and f.reason.str.len().gt(0).all()
    inj = pd.read_parquet(out / "injections.parquet")
    assert "syn0_00003" not in set(inj.galaxy_id) and np.isfinite(inj.p_lens).all()   # excluded, never scored as zeros
    assert read_marker(run, get_stage("inject"))["status"] == "done_with_failures"
    cells = out / "cells"
    bad_cells = {p.name for p in cells.glob("cell_*.json") if json.loads(p.read_text())["failures"]}
    mtimes = {p.name: p.stat().st_mtime_ns for p in cells.glob("cell_*.json")}
    run_inject_stage(cfg, run, progress=False, scorer=ORACLE)                       # the next run retries the failed cells only
    m = read_marker(run, get_stage("inject"))
    assert m["plan"]["action"] == "retry" and m["status"] == "done_with_failures"
    redone = {p.name for p in cells.glob("cell_*.json") if p.stat().st_mtime_ns != mtimes[p.name]}
    assert bad_cells and redone == bad_cells, (redone, bad_cells)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "injections.parquet"), inj)   # same draws: the same table


@pytest.mark.slow
@pytest.mark.spark
def test_spark_engine_equals_local(tmp_path):
    from stronglens.injection_spark import run_cells_spark
    synthetic_host_run(str(tmp_path), n=30, seed=9)
    hosts = host_table(pd.read_parquet(tmp_path / "manifests/training_manifest.parquet"),
                       pd.read_parquet(tmp_path / "manifests/negative_pool.parquet"), str(tmp_path))
    cfg = InjectionConfig(n_per_cell=6)
    ctx = CellContext(cfg, hosts, LENSPOP_SOURCE_COLOURS, ORACLE)
    cells = grid_cells(cfg).query("i_theta_e in (0, 7) and i_depth >= 2 and i_psf >= 1 and i_psf <= 5")
    sp, lo = run_cells_spark(cells, ctx), run_cells_local(cells, ctx, n_workers=2, progress=False)
    assert [r.cell_id for r in sp] == [r.cell_id for r in lo] == sorted(cells.cell_id)
    assert sum(len(r.injections) for r in lo) > 0 and any(r.reason for r in lo)
    for a, b in zip(sp, lo):
        pd.testing.assert_frame_equal(a.injections, b.injections)
        assert (a.reason, a.n_hosts, a.n_hosts_available) == (b.reason, b.n_hosts, b.n_hosts_available)


@pytest.mark.slow
def test_run_injection_for_another_stage_and_finder(tmp_path):
    """The audit's use: the grid for another finder (a factory scorer, its own scores) into a sub-folder of another stage."""
    from stronglens.runs import stage_run
    run, cfg = _run(tmp_path, "audit")
    sc = pd.read_parquet(Path(run) / "model" / "scores_all.parquet").assign(p_lens=lambda d: d.p_lens * 0.2)   # another finder
    finder = {"kind": "factory", "target": "stronglens.injection:OracleScorer", "kwargs": {"snr_cut": 8.0}}
    with stage_run(run, "validate", cfg, log=lambda m: None) as st:                # any stage (the audit uses audits/<name>)
        res = run_injection(st, cfg, finder, sc, sub="injection-ext", progress=False)
    out = Path(run) / "validation" / "injection-ext"
    for f in OUTPUTS: assert (out / f).exists(), f
    assert not (Path(run) / "injection").exists()                                   # nothing in the inject stage's folder
    inj = pd.read_parquet(out / "injections.parquet")
    assert (inj.detected == (inj.arc_snr > 8.0)).all() and res["n_injections"] == len(inj) > 0
    thr = json.loads((out / "closure.json").read_text())["threshold"]
    assert thr["split"] == "val" and thr["value"] > sc.query("split == 'val'").p_lens.max() and thr["value"] < 0.1 + 1e-9
