"""The stage protocol (`stronglens.runs`) on toy stages: decisions, markers, fingerprints, hold/adopt, object stores.

Issue 12: a killed stage resumed under a changed config mixed outputs (defect 3); skips trusted the marker, not the
outputs, and a replaced input went unnoticed (defect 5); failures were recorded and never retried, and a stage losing
29 % of its items exited 0 (defect 1, the protocol side); temp files of a killed writer stayed forever (defect 7)."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest
from stronglens.config import config_from_dict, atomic_write_json
from stronglens.runs import (StageError, StageOrderError, stage_run, plan_stage, read_marker, get_stage, STAGES,
                             TOKEN_ENV, check_outputs, fingerprint_outputs, scan_files)


def cfg(seed=7, frac=0.01, **extra):
    d = {"run": {"seed": 1, "max_failure_frac": frac}, "sky": {"seed": seed}}
    d.update(extra)
    return config_from_dict(d)


def sky(c, run, n=20, fail=(), die_after=None, log=None):
    "A toy sky stage: item i -> item{i}.txt holding the seed; items in `fail` fail; raises after `die_after` items."
    with stage_run(run, "sky", c, log=log or (lambda *_: None)) as st:
        if st.skip: return st.result
        done = 0
        for i in range(n):
            f = Path(st.path(f"item{i:03d}.txt"))
            if (st.resuming or st.retrying) and f.exists(): continue
            if die_after is not None and done == die_after: raise RuntimeError("killed")
            if i in fail: continue
            f.write_text(f"{c.sky.seed}:{i}"); done += 1
        st.failures(len(fail), n, what="items")
        st.result.update(written=done)
    return st.result


def catalogs(c, run, ext=None):
    with stage_run(run, "catalogs", c, log=lambda *_: None) as st:
        if st.skip: return st.result
        Path(st.path("m.txt")).write_text(str(sorted(os.listdir(Path(run, "sky")))))
        st.result.update(ran=True)
    return st.result


def test_resume_never_mixes_two_configs(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError): sky(cfg(3), run, die_after=8)              # seed 3 killed after 8 items
    assert read_marker(run, STAGES["sky"])["status"] == "failed"
    sky(cfg(7), run)                                                              # rerun under seed 7
    seeds = {p.read_text().split(":")[0] for p in (run / "sky").glob("item*.txt")}
    assert seeds == {"7"}, seeds
    assert len(list((run / "sky").glob("item*.txt"))) == 20


def test_resume_under_the_same_config_keeps_valid_outputs(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError): sky(cfg(), run, die_after=8)
    first = {p.name: p.stat().st_mtime_ns for p in (run / "sky").glob("item*.txt")}
    assert plan_stage(run, "sky", cfg()).action == "resume"
    assert sky(cfg(), run)["written"] == 12
    assert {p.name: p.stat().st_mtime_ns for p in (run / "sky").glob("item*.txt") if p.name in first} == first


def test_deleted_or_edited_outputs_are_noticed(tmp_path):
    run = tmp_path / "run"
    sky(cfg(), run); catalogs(cfg(), run)
    (run / "sky" / "item003.txt").unlink()
    p = plan_stage(run, "sky", cfg())
    assert p.action == "resume" and "item003.txt" in p.reasons[0]
    with pytest.raises(StageOrderError, match="1 missing"):
        catalogs(cfg(), run)
    assert sky(cfg(), run)["written"] == 1
    (run / "sky" / "item004.txt").write_text("7:X")                              # same size, other bytes
    os.utime(run / "sky" / "item004.txt", ns=(1, 1))
    p = plan_stage(run, "sky", cfg())
    assert p.action == "resume" and "1 changed (item004.txt)" in p.reasons[0]
    sky(cfg(), run)
    assert (run / "sky" / "item004.txt").read_text() == "7:4"


def test_replaced_input_file_reruns_the_stage_and_what_follows(tmp_path):
    ext = tmp_path / "external"; ext.mkdir()
    (ext / "known_lenses.csv").write_text("galaxy_id,ra,dec\na,1,2\n")
    c = cfg(catalogs={"known_lenses": str(ext / "known_lenses.csv")})
    run = tmp_path / "run"
    sky(c, run); catalogs(c, run)
    assert plan_stage(run, "catalogs", c).action == "skip"
    (ext / "known_lenses.csv").write_text("galaxy_id,ra,dec\nb,1,2\n")          # a fixed catalogue, same size
    p = plan_stage(run, "catalogs", c)
    assert p.action == "rerun" and "known_lenses.csv" in p.reasons[0]
    catalogs(c, run)
    assert plan_stage(run, "catalogs", c).action == "skip"


def test_failures_are_retried_and_too_many_fail_the_stage(tmp_path):
    run = tmp_path / "run"
    sky(cfg(frac=0.1), run, fail={5})                                            # 1 of 20: within 10 %
    m = read_marker(run, STAGES["sky"])
    assert m["status"] == "done_with_failures" and m["failures"]["n_failed"] == 1
    catalogs(cfg(frac=0.1), run)                                                 # downstream may start
    assert plan_stage(run, "sky", cfg(frac=0.1)).action == "retry"
    assert sky(cfg(frac=0.1), run)["written"] == 1                               # exactly the failed one
    assert read_marker(run, STAGES["sky"])["status"] == "done"
    run2 = tmp_path / "run2"
    with pytest.raises(StageError, match=r"6 of 20 items failed \(30.0% > run.max_failure_frac 10.0%\)"):
        sky(cfg(frac=0.1), run2, fail=set(range(6)))
    assert read_marker(run2, STAGES["sky"])["status"] == "failed"
    with pytest.raises(StageOrderError, match="sky, which failed: 6 of 20 items failed"):
        catalogs(cfg(frac=0.1), run2)


def test_stale_temp_files_are_removed_at_stage_start(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError): sky(cfg(), run, die_after=3)
    (run / "sky" / "sub").mkdir()
    litter = [run / "sky" / ".tmp-item005.txt.abc", run / "sky" / "sub" / ".tmp-cache.npy.x"]
    for f in litter: f.write_bytes(b"0" * 1000)
    sky(cfg(), run)
    assert not any(f.exists() for f in litter)


def test_second_writer_is_refused_while_the_first_lives(tmp_path):
    run = tmp_path / "run"
    sky(cfg(), run)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        m = read_marker(run, STAGES["sky"])
        m.update(status="running", holders=[{"pid": p.pid, "pid_start": Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[19],
                                              "host": __import__("socket").gethostname()}])
        atomic_write_json(run / "sky" / "_stage.json", m)
        with pytest.raises(StageError, match="already running"):
            sky(cfg(), run)
    finally:
        p.kill(); p.wait()
    assert plan_stage(run, "sky", cfg()).action == "resume"                      # its holder died: resumable


def test_hold_and_adopt(tmp_path, monkeypatch):
    "The command line holds a stage around a child process whose runner adopts the plan (no second planning)."
    run = tmp_path / "run"
    sky(cfg(), run)
    c8 = cfg(8)
    logs = []
    with stage_run(run, "sky", c8, hold=True, log=logs.append) as outer:
        assert outer.plan.action == "rerun" and os.environ[TOKEN_ENV]
        child = subprocess.run([sys.executable, "-c",
            "import sys; sys.path.insert(0, %r); from test_runs import sky, cfg; print(sky(cfg(8), %r))" % (str(Path(__file__).parent), str(run))],
            capture_output=True, text=True)
        assert child.returncode == 0, child.stderr
    assert TOKEN_ENV not in os.environ
    m = read_marker(run, STAGES["sky"])
    assert m["status"] == "done" and m["result"] == {"written": 20} and len(m["holders"]) == 2
    assert {p.read_text()[0] for p in (run / "sky").glob("item*")} == {"8"}


def test_copied_run_is_verified_not_rerun(tmp_path):
    run = tmp_path / "run"
    sky(cfg(), run); catalogs(cfg(), run)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run), str(copy)], check=True)                 # new mtimes everywhere
    p = plan_stage(copy, "sky", cfg())
    assert p.action == "skip" and "moved" in p.reasons[1]
    assert catalogs(cfg(), copy) == {"ran": True}                                 # skipped: the stored result
    (copy / "sky" / "item001.txt").write_text("7:X")                              # ... but a change is still a change
    assert plan_stage(copy, "sky", cfg()).action == "resume"


def test_outputs_check_without_hashes_uses_size_and_mtime(tmp_path):
    d = tmp_path / "d"; d.mkdir()
    for i in range(50): (d / f"{i}.npz").write_bytes(bytes(i))
    t = fingerprint_outputs({"": str(d)}, budget_bytes=0)
    assert (t.digest == "").all() and check_outputs(t, {"": str(d)}).ok
    (d / "7.npz").write_bytes(b"x" * 7)                                           # same size, new mtime
    assert check_outputs(t, {"": str(d)}).changed == ["7.npz"]


@pytest.mark.s3
def test_protocol_on_an_object_store(s3_bucket):
    run = f"s3://{s3_bucket}/runs/r1"
    from stronglens.config import atomic_write_text, get_fs
    def s3sky(c):
        with stage_run(run, "sky", c, log=lambda *_: None) as st:
            if st.skip: return "skipped"
            for i in range(3): atomic_write_text(st.path(f"i{i}.txt"), f"{c.sky.seed}:{i}")
        return "ran"
    assert s3sky(cfg()) == "ran" and s3sky(cfg()) == "skipped"
    assert read_marker(run, STAGES["sky"])["outputs"]["n_files"] == 3
    fs, _ = get_fs(run)
    fs.rm(f"{s3_bucket}/runs/r1/sky/i1.txt")
    assert plan_stage(run, "sky", cfg()).action == "resume"
    assert s3sky(cfg(8)) == "ran"
    assert {fs.cat(f"{s3_bucket}/runs/r1/sky/i{i}.txt").decode()[0] for i in range(3)} == {"8"}


def test_files_in_a_stage_folder_without_a_marker_are_listed_not_deleted(tmp_path):
    "Lead's review: with no marker, the protocol wiped whatever was in the stage folder before the runner ran."
    run = tmp_path / "run"
    (run / "sky").mkdir(parents=True)
    mine = run / "sky" / "my_notes.txt"; mine.write_text("not made by stronglens")
    with pytest.raises(StageError, match=r"holds 1 files \(my_notes.txt\).*--force"):
        sky(cfg(), run)
    assert mine.exists() and read_marker(run, STAGES["sky"]) is None
    logs = []
    with stage_run(run, "sky", cfg(), force=True, log=logs.append) as st:   # --force: cleared, and it says what
        Path(st.path("item000.txt")).write_text("7:0")
    assert not mine.exists() and any("my_notes.txt" in l for l in logs) and any("cleared 1 files" in l for l in logs), logs


def test_an_external_prefix_with_files_no_run_made_is_never_cleared(tmp_path):
    "Lead's review: an external output prefix (a user's folder) was wiped when the stage had no marker or its config changed."
    run, ext = tmp_path / "run", tmp_path / "users_catalogs"
    ext.mkdir(); theirs = ext / "dr9_cut.parquet"; theirs.write_bytes(b"PAR1")
    c = cfg(catalogs={"out_dir": str(ext)})
    sky(c, run)
    for force in (False, True):                                                   # no marker, with and without --force
        with pytest.raises(StageError, match=r"dr9_cut.parquet.*point catalogs.out_dir elsewhere"):
            catalogs(c, run) if not force else plan_stage(run, "catalogs", c, force=True)
    assert theirs.exists() and not (run / "manifests").exists()
    catalogs(cfg(), run)                                                          # done, writing inside the run only
    with pytest.raises(StageError, match="no run recorded writing"):             # a config change points at the folder
        plan_stage(run, "catalogs", c)
    assert theirs.exists()


def test_an_external_prefix_the_run_wrote_is_cleared_on_a_config_change(tmp_path):
    "The positive control: what a run wrote under its external prefix is its own, and a config change clears it."
    run, ext = tmp_path / "run", tmp_path / "out"
    def cat(c):
        with stage_run(run, "catalogs", c, log=lambda *_: None) as st:
            if st.skip: return
            ext.mkdir(exist_ok=True); (ext / f"part-{c.negatives.seed}.parquet").write_bytes(b"x")
    c1 = cfg(catalogs={"out_dir": str(ext)}, negatives={"seed": 1}); sky(c1, run); cat(c1)
    assert read_marker(run, STAGES["catalogs"])["roots"] == {"": str(run / "manifests"), str(ext): str(ext)}
    c2 = cfg(catalogs={"out_dir": str(ext)}, negatives={"seed": 2}); cat(c2)
    assert sorted(p.name for p in ext.iterdir()) == ["part-2.parquet"]


def test_an_adopting_stage_keeps_files_under_its_external_prefix(tmp_path):
    "cutouts vets existing NPZs by its source stamp itself: the protocol leaves an unmarked external prefix to it."
    run, ext = tmp_path / "run", tmp_path / "stamps"
    ext.mkdir(); old = ext / "g1.npz"; old.write_bytes(b"x" * 100)
    c = cfg(cutouts={"out_prefix": str(ext)})
    sky(c, run); catalogs(c, run)
    p = plan_stage(run, "cutouts", c)
    assert p.action == "run" and str(ext) in p.keep and "left to the stage" in p.reasons[-1], p
    with stage_run(run, "cutouts", c, log=lambda *_: None) as st:
        assert old.exists()
    assert old.exists()


def test_audit_reruns_when_its_finder_file_is_replaced(tmp_path):
    "Audit request: a replaced scores file at the same path is an input change; the audit needs the sky on the mock."
    from stronglens.runs import needed_upstream
    run, scores = tmp_path / "run", tmp_path / "finder_scores.csv"
    scores.write_text("galaxy_id,p_lens\na,0.1\n")
    c = cfg(audit={"name": "ext", "scores": str(scores)})
    assert needed_upstream(get_stage("audit:ext"), c) == ["catalogs", "cutouts", "sky"]
    sky(c, run); catalogs(c, run)
    with stage_run(run, "cutouts", c, log=lambda *_: None) as st: Path(st.path("a.npz")).write_bytes(b"x")
    with stage_run(run, "audit", c, instance="ext", log=lambda *_: None) as st: Path(st.path("audit.json")).write_text("{}")
    assert plan_stage(run, "audit:ext", c).action == "skip"
    from stronglens.cli import stage_status                                       # `stronglens status` lists audits
    assert [(r["stage"], r["status"]) for r in stage_status(run)][-2:] == [("cutouts", "done"), ("audit:ext", "done")]
    scores.write_text("galaxy_id,p_lens\na,0.9\n")
    p = plan_stage(run, "audit:ext", c)
    assert p.action == "rerun" and "finder_scores.csv" in p.reasons[0], p


def test_a_redone_output_with_the_same_bytes_does_not_rerun_downstream(tmp_path):
    """One deleted NPZ, regenerated with the same bytes, retrained the model: the cutouts' report (timings, counts of this
    run, commit) changed the stage's fingerprint. Report files are verified for the stage's own skip, not fed downstream."""
    run, c = tmp_path / "run", cfg()
    sky(c, run); catalogs(c, run)
    def cut():
        with stage_run(run, "cutouts", c, log=lambda *_: None) as st:
            if st.skip: return
            todo = [g for g in ("a", "b") if not Path(st.path(f"{g}.npz")).exists()]
            for g in todo: Path(st.path(f"{g}.npz")).write_bytes(f"pixels of {g}".encode())
            Path(st.path("cutouts_report.json")).write_text(json.dumps({"n_written": len(todo), "t": time.time()}))
    cut(); fp = read_marker(run, STAGES["cutouts"])["fingerprint"]
    (run / "cutouts" / "b.npz").unlink()
    assert plan_stage(run, "cutouts", c).action == "resume"
    cut()
    assert read_marker(run, STAGES["cutouts"])["fingerprint"] == fp
    (run / "cutouts" / "cutouts_report.json").unlink()                            # still an output of the stage itself
    assert plan_stage(run, "cutouts", c).action == "resume"


def test_a_kernel_adopts_a_plan_made_before_a_config_field_was_added(tmp_path):
    "The e2e demo failed 'config differs' when a section gained a field (at its default) between planning and the kernel."
    import hashlib
    from stronglens.runs import _default_of
    run = tmp_path / "run"
    with stage_run(run, "sky", cfg(), hold=True, log=lambda *_: None):
        m = read_marker(run, STAGES["sky"])
        k = next(k for k, v in m["config"].items() if _default_of(k) == v)       # a key at its default ...
        m["config"].pop(k)                                                        # ... that the planner did not know yet
        m["config_hash"] = hashlib.sha256(json.dumps(m["config"], sort_keys=True).encode()).hexdigest()[:16]
        atomic_write_json(run / "sky" / "_stage.json", m)
        assert sky(cfg(), run) == {"written": 20}                                # adopted, not refused
    assert read_marker(run, STAGES["sky"])["status"] == "done"
