"""Audit of external finders (issue 17) on a synthetic run with real stage markers: an external scores table reproduces
the in-house report exactly, TorchScript/ONNX exports reproduce it within 1e-5, a central-brightness finder is flagged
by the counterfactual arc tests and an arc detector is not, bad scores files give the documented error and write
nothing, every output carries its provenance."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stronglens.audit import (ARC_TESTS, ScoresError, check_external_scores, main, read_audit, run_audit_stage, with_audit)
from stronglens.data import ring_index
from stronglens.report import ReportConfig, build_report, load_report_inputs, synthetic_run
from stronglens.train import export_onnx, export_torchscript, score as train_score

TABLES = ("table1_data_summary", "table2_stratification", "table3_tierA_recall", "table4_contaminant_fpr")


class CentralBrightness(torch.nn.Module):
    "A shortcut finder: logit from the mean r-band flux of the central disc (r < 5 px) of raw NHWC nanomaggies."
    def __init__(self):
        super().__init__(); self.register_buffer("disc", torch.from_numpy(ring_index((101, 101)) < 5))
    def forward(self, x):
        return 4.0 * (torch.log10(x[:, :, :, 1][:, self.disc].mean(1).clamp_min(1e-3)) + 0.6)


class ArcPeak(torch.nn.Module):
    "An arc detector: peak of the 5x5-smoothed r-band residual from each ring's median, between 4 and 16 px."
    def __init__(self):
        super().__init__(); r = torch.from_numpy(ring_index((101, 101))); self.register_buffer("ring", r)
        self.register_buffer("onehot", torch.nn.functional.one_hot(r.flatten()).float())          # (P, R)
        self.register_buffer("annulus", (r >= 4) & (r <= 16))
    def forward(self, x):
        r = x[:, :, :, 1]; n = r.shape[0]; flat = r.reshape(n, -1)
        med = torch.stack([flat[:, self.onehot[:, k] > 0].median(1).values for k in range(self.onehot.shape[1])], 1)
        res = r - med[:, self.ring]
        sm = torch.nn.functional.avg_pool2d(res[:, None], 5, stride=1, padding=2)[:, 0]
        return 300.0 * sm[:, self.annulus].max(1).values - 4.0


def _plant_bright_cores(run: str, cfg, amp_nmgy: float = 0.25, sigma_px: float = 1.5):
    "Give the positives' cutouts a brighter core (a data shortcut, like the mock's `shortcut: bright_core`); re-mark the cutouts stage."
    from stronglens.cutouts import read_cutout, write_cutout
    from stronglens.runs import stage_run
    man = pd.read_parquet(f"{run}/manifests/training_manifest.parquet")
    y, x = np.mgrid[:101, :101] - 50.0
    bump = (amp_nmgy * np.exp(-0.5 * (x ** 2 + y ** 2) / sigma_px ** 2))[..., None] * np.array([0.5, 0.8, 1.0])
    stamps = {r.galaxy_id: read_cutout(f"{run}/{r.s3_path}")[0] + (bump if r.label == 1 else 0) for r in man.itertuples()}
    with stage_run(run, "cutouts", cfg, force=True, log=lambda m: None) as st:
        for r in man.itertuples(): write_cutout(st.path(f"{r.galaxy_id}.npz"), stamps[r.galaxy_id].astype(np.float32), {"galaxy_id": r.galaxy_id, "ra": r.ra, "dec": r.dec})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit")
    cfg = synthetic_run(str(d / "run"), n=600, seed=4)
    _plant_bright_cores(str(d / "run"), cfg)
    return d, str(d / "run"), cfg


def _in_house(d: Path, run: str) -> dict:
    out = d / "inhouse"
    if not (out / "report.json").exists(): build_report(load_report_inputs(run), str(out), ReportConfig(), log=lambda m: None)
    return json.loads((out / "report.json").read_text())


def _numbers(rep: dict) -> dict:
    return {"threshold": rep["threshold"]["value"], "fpr": rep["threshold"]["fpr"], "headline": rep["headline"], "calibration": rep["calibration"]}


def test_in_house_scores_as_external_file_reproduce_the_in_house_report_exactly(run):
    d, r, cfg = run
    ref = _in_house(d, r)
    sc = pd.read_parquet(f"{r}/model/scores_all.parquet")[["galaxy_id", "logit", "p_lens"]].sample(frac=1, random_state=0)
    sc.to_csv(d / "finder.csv", index=False)                 # shuffled rows, CSV text: the audit must not care
    res = run_audit_stage(with_audit(cfg, name="own-scores", scores=str(d / "finder.csv")), r, progress=False)
    rep = json.loads(Path(r, "audits/own-scores/report/report.json").read_text())
    assert _numbers(rep) == _numbers(ref)
    for t in TABLES:
        assert Path(r, f"audits/own-scores/report/tables/{t}.csv").read_text() == (d / "inhouse" / "tables" / f"{t}.csv").read_text(), t
    assert res["kind"] == "scores" and res["n_scored"] == len(pd.read_parquet(f"{r}/manifests/training_manifest.parquet"))
    assert not Path(r, "model", "audit").exists() and Path(r, "model", "scores_all.parquet").exists()   # in-house outputs untouched
    assert set(res["skipped"]) == {"counterfactual", "injection"}          # a scores table cannot be re-scored: said, not hidden
    assert sum("not run for this finder" in m for lvl, m in rep["alerts"] if lvl == "amber") == 2


def test_torchscript_and_onnx_exports_reproduce_the_in_house_numbers(run):
    d, r, cfg = run
    ck = f"{r}/model/checkpoints/best.pt"
    man = pd.read_parquet(f"{r}/manifests/training_manifest.parquet")
    own = train_score(ck, man, root=r, progress=False, cache_dir=str(d / "cache"))      # the checkpoint's own scores
    own[["galaxy_id", "logit", "p_lens"]].to_csv(d / "ck.csv", index=False)
    run_audit_stage(with_audit(cfg, name="ck-scores", scores=str(d / "ck.csv")), r, progress=False)
    ref = json.loads(Path(r, "audits/ck-scores/report/report.json").read_text())
    for name, f in (("ts", export_torchscript(ck, str(d / "cnn.ts"))), ("onnx", export_onnx(ck, str(d / "cnn.onnx")))):
        run_audit_stage(with_audit(cfg, name=name, model=f, counterfactual=False, injection=False), r, progress=False)
        sc = pd.read_parquet(f"{r}/audits/{name}/scores.parquet").merge(own, on="galaxy_id", suffixes=("", "_ck"))
        assert len(sc) == len(man) and np.abs(sc.p_lens - sc.p_lens_ck).max() < 1e-5, name
        rep = json.loads(Path(r, f"audits/{name}/report/report.json").read_text())
        assert abs(rep["threshold"]["value"] - ref["threshold"]["value"]) < 1e-5
        for k in ("auc", "recall", "fpr"):
            assert abs(rep["headline"][k]["value"] - ref["headline"][k]["value"]) < 1e-5, (name, k)
            assert np.allclose(rep["headline"][k]["ci"], ref["headline"][k]["ci"], atol=1e-5), (name, k)


def test_shortcut_finder_is_flagged_and_arc_finder_is_not(run):
    d, r, cfg = run
    for name, m in (("core", CentralBrightness()), ("arcs", ArcPeak())):
        torch.jit.script(m).save(str(d / f"{name}.pt"))
        run_audit_stage(with_audit(cfg, name=name, model=str(d / f"{name}.pt"), injection=False), r, progress=False)
    core, arcs = read_audit(r, "core"), read_audit(r, "arcs")
    assert core["verdict"]["verdict"] == "shortcut-driven"
    assert core["summary"]["skipped"] == {"injection": "switched off (audit.injection: false / --no-injection)"}
    t = core["counterfactual"].set_index("test")
    assert abs(t.loc["arcs_shuffled", "drop"]) < 1e-6 and t.loc["core_masked", "drop"] > 0.1
    rep = json.loads(Path(r, "audits/core/report/report.json").read_text())
    assert any(lvl == "red" and "Shortcut-driven" in msg for lvl, msg in rep["alerts"])
    assert "Counterfactual arc tests" in Path(r, "audits/core/report/index.html").read_text()
    assert arcs["verdict"]["verdict"] == "arc-driven", arcs["counterfactual"]
    rep = json.loads(Path(r, "audits/arcs/report/report.json").read_text())
    assert not any("Shortcut-driven" in msg for _, msg in rep["alerts"])


@pytest.mark.parametrize("case, expect", [
    ("missing_rows", "have no score"), ("duplicate", "duplicated galaxy_id"), ("nan", "missing or non-numeric p_lens"),
    ("out_of_range", "outside [0, 1]"), ("no_column", "missing column"), ("bad_logit", "disagrees with p_lens")])
def test_bad_scores_file_gives_the_documented_error_and_writes_nothing(run, case, expect, capsys):
    d, r, cfg = run
    sc = pd.read_parquet(f"{r}/model/scores_all.parquet")[["galaxy_id", "logit", "p_lens"]]
    bad = {"missing_rows": lambda s: s.iloc[3:], "duplicate": lambda s: pd.concat([s, s.iloc[[7]]]),
           "nan": lambda s: s.assign(p_lens=s.p_lens.where(s.index != 5)), "out_of_range": lambda s: s.assign(p_lens=s.p_lens.where(s.index != 9, 1.5)),
           "no_column": lambda s: s.rename(columns={"p_lens": "prob"}), "bad_logit": lambda s: s.assign(logit=s.logit + 1)}[case](sc)
    f = d / f"bad_{case}.parquet"; bad.to_parquet(f)
    before = sorted(p.relative_to(r) for p in Path(r).rglob("*"))
    with pytest.raises(ScoresError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        run_audit_stage(with_audit(cfg, name=f"bad-{case}", scores=str(f)), r, progress=False)
    assert main([r, "--scores", str(f), "--name", f"bad-{case}"]) == 2
    err = capsys.readouterr().err
    assert expect in err and "nothing was written" in err
    if case not in ("no_column",): assert "row" in err or "galaxies have no score" in err
    assert sorted(p.relative_to(r) for p in Path(r).rglob("*")) == before


def test_every_audit_output_records_its_provenance(run):
    d, r, cfg = run
    sc = pd.read_parquet(f"{r}/model/scores_all.parquet")[["galaxy_id", "p_lens"]]
    sc.to_csv(d / "prov.csv", index=False)
    assert main([r, "--scores", str(d / "prov.csv"), "--name", "prov"]) == 0
    out = Path(r, "audits/prov")
    keys = {"pipeline_version", "git_commit", "config_hash", "seed", "inputs", "finder"}
    for doc in (json.loads((out / "provenance.json").read_text()), json.loads((out / "audit.json").read_text())["provenance"],
                json.loads((out / "report/report.json").read_text())["provenance"], pd.read_parquet(out / "scores.parquet").attrs["provenance"]):
        assert keys <= set(doc), keys - set(doc)
        assert {"stage:catalogs", "stage:cutouts"} <= set(doc["inputs"]) and doc["finder"]["blake2b"]
    # a replaced scores file (same path) is a changed input: the audit reruns
    sc.assign(p_lens=sc.p_lens * 0.9).to_csv(d / "prov.csv", index=False)
    assert main([r, "--scores", str(d / "prov.csv"), "--name", "prov", "--dry-run"]) == 0


def _tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


ROOT = Path(__file__).resolve().parents[1]


def readme_section(title: str) -> tuple[str, str]:
    "(prose, the bash block) of README.md's section `## title`."
    text = (ROOT / "README.md").read_text()
    sec = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return sec, sec.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_audit_walkthrough_runs_as_written_on_the_tiny_run(tiny_run, tmp_path):
    """README 'Audit your own lens finder', command by command, in a folder laid out like a checkout after `make demo`
    (.venv, runs/demo = a copy of the tiny run): a scores file and the exported TorchScript CNN are audited, the pages the
    prose says to open exist, the model's injection runs on the in-house grid, test (d) re-renders without arcs, the
    in-house outputs are untouched and --no-progress prints no bar."""
    import re, subprocess, sys
    from conftest import copy_run
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "stronglens").exists(): pytest.skip(f"no stronglens command beside {sys.executable}")
    work = tmp_path / "checkout"; (work / "runs").mkdir(parents=True); (work / ".venv").symlink_to(venv)
    run = copy_run(tiny_run, work / "runs" / "demo")
    inhouse = {d: _tree_digest(run / d) for d in ("injection", "model", "report") if (run / d).is_dir()}
    assert "injection" in inhouse, "the tiny demo has no injection stage"
    prose, block = readme_section("Audit your own lens finder")
    r = subprocess.run(["bash", "-e", "-c", block], cwd=work, capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "%|" not in r.stderr and "it/s" not in r.stderr, r.stderr[-2000:]                 # --no-progress
    pages = re.findall(r"`(runs/demo/[^`]+?\.html)`", prose)
    assert len(pages) >= 3 and all((work / p).is_file() for p in pages), pages
    assert "audit:their-cnn" in r.stdout and "audit:demo-cnn" in r.stdout                     # `stronglens status`
    ours, theirs = (json.loads((run / f).read_text()) for f in ("report/report.json", "audits/their-cnn/report/report.json"))
    assert theirs["threshold"]["value"] == ours["threshold"]["value"]                           # the demo's own scores: its numbers
    for k in ("auc", "recall", "fpr"): assert theirs["headline"][k]["value"] == ours["headline"][k]["value"], k
    a = read_audit(str(run), "demo-cnn"); s = a["summary"]
    assert s["kind"] == "model" and s["skipped"] == {} and s["injection"]["n_cells"] == 385
    assert len(pd.read_parquet(run / "audits/demo-cnn/injection/completeness.parquet")) == 385
    assert json.loads((run / "audits/demo-cnn/injection/closure.json").read_text())["threshold"]["value"] == s["threshold"]
    assert "fig3_selection_function" in json.loads((run / "audits/demo-cnn/report/report.json").read_text())["figures"]
    t = a["counterfactual"].set_index("test")
    assert t.loc["no_arcs_mock", "n"] > 0 and set(ARC_TESTS) <= set(t.index)                 # (d) ran on the mock sky
    sc = pd.read_parquet(run / "audits/demo-cnn/scores.parquet").merge(pd.read_parquet(run / "model/scores_all.parquet"), on="galaxy_id", suffixes=("", "_ck"))
    assert np.abs(sc.p_lens - sc.p_lens_ck).max() < 1e-5                                        # the exported CNN is the CNN
    assert {d: _tree_digest(run / d) for d in inhouse} == inhouse                              # the in-house outputs are untouched


@pytest.mark.slow
def test_every_stage_of_a_full_run_carries_provenance(tiny_run, tmp_path):
    """Issue 17.3 on a whole (tiny) pipeline run plus an audit: `provenance_check` finds a complete in-file provenance
    record (pipeline_version, git_commit, config_hash, seed, inputs) in a JSON output of every stage, and every JSON the
    report and audit stages write carries one."""
    from conftest import copy_run
    from stronglens.audit import provenance_check
    run = copy_run(tiny_run, tmp_path / "run")
    pd.read_parquet(run / "model/scores_all.parquet")[["galaxy_id", "p_lens"]].to_csv(tmp_path / "s.csv", index=False)
    assert main([str(run), "--scores", str(tmp_path / "s.csv"), "--name", "prov", "--no-progress"]) == 0
    pc = provenance_check(str(run)).set_index("stage")
    assert {"sky", "catalogs", "cutouts", "train", "validate", "inject", "report", "audit:prov"} <= set(pc.index), pc
    lacking = {s: m for s, m in pc["missing"].items() if m}
    assert not lacking, f"stages without an in-file provenance record: {lacking}\n{pc.to_string()}"
    for s in ("report", "audit:prov"):
        assert pc.loc[s, "json_with_provenance"] == pc.loc[s, "json_outputs"] > 0, pc.loc[s]
