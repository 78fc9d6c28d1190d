"""The run folder under kills, changes and copies, on the real pipeline with the tiny config (issue 12; slow).

One uninterrupted tiny run (`tiny_run`, conftest) is the reference; every test works on a copy or a new run:
- SIGKILL of the command in each stage, then a rerun: outputs equal to the uninterrupted run, no orphan process;
- a cutouts stage killed under seed 3 and rerun under the run's seed: no file of seed 3 survives (defect 3);
- `stronglens demo DIR` on an existing run: its own config, nothing cleared without a message (defect 4);
- deleted outputs noticed and redone, a replaced input file noticed (defect 5);
- a copied run reads its own cutouts and is not rerun (defect 9); outputs honour the umask (defect 10)."""
import json, os, random, re, shutil, signal, stat, subprocess, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from conftest import STRONGLENS, copy_run
from stronglens.config import load_config, resolve_path, current_umask
from stronglens.runs import read_marker, get_stage, TOKEN_ENV, PIPELINE_STAGES

pytestmark = pytest.mark.slow
STAMP = re.compile(r"\d{8}_\d{6}")
# content that legitimately differs between two identical runs: wall-clock times and speeds, the git commit, and in
# JSON/checkpoints the stage fingerprints a provenance record quotes (`inputs`; the sky's metadata holds its build
# time), the training cache's key (file mtimes) and the global torch RNG state a checkpoint stores (weights do match)
VOLATILE = re.compile(r"(^|_)(utc|seconds|timestamp|created|finished|started|git_commit|per_s|time|elapsed_s)($|_)")
# and a stage report's counts of what this particular invocation did (a resumed cutouts stage skips the stamps written
# before the kill: n_skipped_existing 90, n_attempted 270 where the uninterrupted run says 0 and 360; the stamps match)
VOLATILE_KEYS = re.compile(VOLATILE.pattern + r"|^(inputs|key|rng_torch|run_dir)$|^n_(skipped_existing|attempted|written)$")


def _stages(run: Path) -> list[str]:
    return [s for s in PIPELINE_STAGES if read_marker(run, get_stage(s))]


def cli(*args, timeout=1800, **kw):
    return subprocess.run([STRONGLENS, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def _outputs(run: Path) -> dict:
    "{stage-relative path, validation stamp normalised: (file, recorded digest)} over every stage's recorded outputs."
    out = {}
    for s in _stages(run):
        spec = get_stage(s)
        t = pd.read_parquet(run / spec.folder / "_stage_files.parquet")
        for root, p, d in zip(t["root"], t["path"], t["digest"]):
            f = (run / spec.folder / p) if not root else Path(resolve_path(run, root)) / p
            out[STAMP.sub("<stamp>", f"{spec.folder}/{p}" if not root else f"{root}/{p}")] = (f, d)
    return out


def _strip(o):
    "JSON-like object without volatile keys."
    if isinstance(o, dict): return {k: _strip(v) for k, v in o.items() if not VOLATILE_KEYS.search(str(k))}
    if isinstance(o, list): return [_strip(v) for v in o]
    return o


# in pages and tables: the run folder, ISO times and the git commit (a report's footer)
TEXT_VOLATILE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)?|commit [0-9a-f]{7,40}")


def same_content(a: Path, b: Path, ra: Path | None = None, rb: Path | None = None) -> bool:
    "Equal bytes, or equal content once volatile fields (times, speeds, commit, the run folders ra/rb) are set aside."
    if a.read_bytes() == b.read_bytes(): return True
    if a.suffix in (".html", ".md", ".tex", ".txt") and ra and rb:
        norm = lambda f, r: TEXT_VOLATILE.sub("<v>", f.read_text(errors="replace").replace(str(r), "<run>"))
        return norm(a, ra) == norm(b, rb)
    if a.suffix in (".parquet", ".csv"):
        rd = pd.read_parquet if a.suffix == ".parquet" else pd.read_csv
        x, y = rd(a), rd(b)
        keep = lambda df: df[[c for c in df.columns if not VOLATILE.search(c)]]
        return keep(x).equals(keep(y))
    if a.suffix == ".json": return _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))
    if a.suffix == ".pt":
        import torch
        def flat(o, pre=""):
            if isinstance(o, dict): return {k2: v2 for k, v in o.items() if not VOLATILE_KEYS.search(str(k)) for k2, v2 in flat(v, f"{pre}.{k}").items()}
            if isinstance(o, (list, tuple)): return {k2: v2 for i, v in enumerate(o) for k2, v2 in flat(v, f"{pre}[{i}]").items()}
            return {pre: o}
        x, y = (flat(torch.load(f, map_location="cpu", weights_only=True)) for f in (a, b))
        return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)
    return False


def compare_runs(a: Path, b: Path) -> list[str]:
    "Outputs that differ between runs a and b: missing on either side, or other content (see `same_content`)."
    oa, ob = _outputs(a), _outputs(b)
    return sorted(k for k in set(oa) | set(ob)
                  if k not in oa or k not in ob or (oa[k][1] != ob[k][1] or not oa[k][1]) and not same_content(oa[k][0], ob[k][0], a, b))


def procs_with_token(token: str) -> list[int]:
    "Live processes started under a stage token (the kernel, its pool workers, anything they started)."
    needle, found = f"{TOKEN_ENV}={token}".encode(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid(): continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0") and (d / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX":
                found.append(int(d.name))
        except OSError:
            pass
    return found


def _wait(pred, timeout, step=0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred(): return True
        time.sleep(step)
    return False


def kill_in_stage(run: Path, stage: str, args, delay_s: float) -> str:
    """Start `stronglens demo RUN ...`, SIGKILL it `delay_s` after `stage` is marked running (by this command: a marker
    left by an earlier kill does not count); check that nothing started under the stage survives. Returns "killed"
    when the stage was still running at the kill, else "finished" (it ended first, the kill landed later or never)."""
    spec = get_stage(stage)
    old = (read_marker(run, spec) or {}).get("token")
    p = subprocess.Popen([STRONGLENS, "demo", str(run), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    token = lambda: (read_marker(run, spec) or {}).get("token")
    running = lambda: (read_marker(run, spec) or {}).get("status") == "running" and token() not in (None, old)
    ok = _wait(lambda: running() or p.poll() is not None, 1200)
    if p.poll() is not None or not ok:
        p.wait(); return "finished"
    time.sleep(delay_s)
    t = token()
    p.send_signal(signal.SIGKILL); p.wait()
    assert _wait(lambda: not procs_with_token(t), 20), f"orphans after SIGKILL in {stage}: {procs_with_token(t)}"
    return "killed" if (read_marker(run, spec) or {}).get("status") == "running" else "finished"


def test_kill_in_every_stage_then_rerun_equals_an_uninterrupted_run(tiny_run, tmp_path):
    run = tmp_path / "killed"
    rnd = random.Random(12)
    what = {}
    for s in _stages(tiny_run):
        m = read_marker(run, get_stage(s)) or {}
        if m.get("status") in ("done", "done_with_failures"): what[s] = "already done"; continue
        # the kill lands 15-60 % into the stage, as long as it took in the reference run on this machine
        delay_s = rnd.uniform(0.15, 0.6) * read_marker(tiny_run, get_stage(s))["seconds"]
        what[s] = kill_in_stage(run, s, ["--config", "tiny"] if not (run / "config.yaml").exists() else [], delay_s)
    assert list(what.values()).count("killed") >= 3, what
    r = cli("demo", run)
    assert r.returncode == 0, (what, r.stdout[-2000:], r.stderr[-2000:])
    assert "resum" in r.stdout, r.stdout                       # at least one stage was resumed, not restarted
    for s in _stages(tiny_run):
        assert read_marker(run, get_stage(s))["status"] == read_marker(tiny_run, get_stage(s))["status"], s
    assert compare_runs(tiny_run, run) == [], what
    assert not list(run.rglob(".tmp-*")), "temp files left behind"


def _n_newer(folder: Path, t0_ns: int) -> int:
    "NPZ files in `folder` written after `t0_ns` (one stat each; a file cleared meanwhile is not counted)."
    n = 0
    for f in folder.glob("*.npz"):
        try: n += f.stat().st_mtime_ns > t0_ns
        except FileNotFoundError: pass
    return n


def test_cutouts_killed_under_another_seed_never_mix(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    seed0 = load_config(run / "config.yaml").cutouts.seed
    npz = lambda: {p.name: p.read_bytes() for p in (run / "cutouts").glob("*.npz")}
    ref = npz()
    orig = tmp_path / "orig.yaml"; shutil.copy(run / "config.yaml", orig)   # the command saves what it ran with
    t0 = time.time_ns()
    # small batches: the seed-3 run writes a few files at a time, so it is killed part-way even on a loaded machine
    p = subprocess.Popen([STRONGLENS, "run", "cutouts", "--run-dir", str(run), "-p", "cutouts.seed", str(seed0 + 3),
                          "-p", "cutouts.batch_size", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait(lambda: _n_newer(run / "cutouts", t0) >= 20 or p.poll() is not None, 900)
    p.send_signal(signal.SIGKILL); p.wait()
    half = {k: v for k, v in npz().items() if v != ref.get(k)}          # what the killed seed-3 run wrote
    assert 20 <= len(half) < len(ref)
    r = cli("run", "cutouts", "--run-dir", run, "--config", orig)         # back to the run's own config
    assert r.returncode == 0, r.stderr
    assert f"cutouts.seed: {seed0 + 3} -> {seed0}" in r.stdout and "clear" in r.stdout, r.stdout
    final = npz()
    assert set(final) == set(ref)
    assert [k for k in final if final[k] != ref[k]] == []                # every file is the run's seed again
    assert not any(final[k] == v for k, v in half.items())


def test_demo_on_an_existing_run_reuses_its_config_and_says_what_it_clears(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    r = cli("demo", run, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "using the run's own config" in r.stdout and r.stdout.count("up to date; skipping") == len(_stages(tiny_run)), r.stdout
    assert "clear" not in r.stdout and compare_runs(tiny_run, run) == []
    old = load_config(run / "config.yaml").validation.gates_n
    dry = cli("demo", run, "--dry-run", "-p", "validation.gates_n", old // 2)
    assert re.search(rf"validate\s+rerun\s+config changed: validation.gates_n: {old} -> {old // 2}", dry.stdout), dry.stdout
    r = cli("demo", run, "-p", "validation.gates_n", old // 2)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    said = [i for i, l in enumerate(lines) if f"validation.gates_n: {old} -> {old // 2}" in l]
    cleared = [i for i, l in enumerate(lines) if re.search(r"\[validate\] cleared \d+ files from .*validation", l)]
    assert said and cleared and said[0] < cleared[0], r.stdout
    assert not any(re.search(r"\[(sky|catalogs|cutouts|train)\] (cleared|rerun|run:)", l) for l in lines), r.stdout


def test_deleted_outputs_are_noticed_and_redone(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    victim = sorted((run / "cutouts").glob("*.npz"))[7]
    victim.unlink(); (run / "model" / "scores.parquet").unlink()
    dry = cli("demo", run, "--dry-run")
    rows = {l.split()[0]: l for l in dry.stdout.splitlines() if l.startswith("  ")}
    assert "resume" in rows["cutouts"] and victim.name in rows["cutouts"], dry.stdout
    assert "scores.parquet" in rows["train"], dry.stdout
    blocked = cli("run", "validate", "--run-dir", run)                   # downstream refuses an incomplete upstream
    assert blocked.returncode == 1 and "cutouts" in blocked.stderr and "missing" in blocked.stderr
    r = cli("run", "cutouts", "--run-dir", run)
    assert r.returncode == 0 and victim.read_bytes() == (tiny_run / "cutouts" / victim.name).read_bytes()
    dry = cli("demo", run, "--dry-run")
    rows = {l.split()[0]: l for l in dry.stdout.splitlines() if l.startswith("  ")}
    assert "skip" in rows["cutouts"] and "resume" in rows["train"], dry.stdout   # same bytes again: train's inputs unchanged


def test_replaced_input_file_is_noticed(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    ext = tmp_path / "catalogue"; ext.mkdir()
    kl = ext / "known_lenses.csv"
    shutil.copy(run / "sky" / "known_lenses.csv", kl)
    r = cli("run", "catalogs", "--run-dir", run, "-p", "catalogs.known_lenses", kl)
    assert r.returncode == 0, r.stderr
    assert "skip" in cli("run", "catalogs", "--run-dir", run, "--dry-run").stdout
    rows = pd.read_csv(kl)
    rows.drop(index=rows.index[(rows.get("is_lens", 1) == 1)][:1]).to_csv(kl, index=False)   # a fixed catalogue
    dry = cli("demo", run, "--dry-run")
    lines = {l.split()[0]: l for l in dry.stdout.splitlines() if l.startswith("  ")}
    assert "rerun" in lines["catalogs"] and "known_lenses.csv" in lines["catalogs"], dry.stdout
    assert all("rerun" in lines[s] for s in ("cutouts", "train", "validate")), dry.stdout


def test_copied_run_reads_its_own_cutouts(tiny_run, tmp_path):
    a = copy_run(tiny_run, tmp_path / "a")
    b = copy_run(a, tmp_path / "b")
    man = pd.read_parquet(b / "manifests" / "training_manifest.parquet")
    where = [Path(resolve_path(b, p)) for p in man.s3_path]
    assert all(w.is_relative_to(b) and w.exists() for w in where), [str(w) for w in where[:3]]
    shutil.rmtree(a)                                                     # the copy's origin is gone
    r = cli("demo", b)
    assert r.returncode == 0 and r.stdout.count("up to date; skipping") == len(_stages(tiny_run)), r.stdout
    assert "moved" in r.stdout
    r = cli("run", "validate", "--run-dir", b, "--force")
    assert r.returncode == 0, r.stderr
    m = read_marker(b, get_stage("validate"))
    assert m["status"] == "done" and (m.get("failures") or {}).get("n_failed", 0) == 0


def test_outputs_honour_the_umask(tiny_run):
    want = 0o666 & ~current_umask()
    bad = [str(p.relative_to(tiny_run)) for p in tiny_run.rglob("*")
           if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o666 != want]
    assert bad == [], bad[:10]
