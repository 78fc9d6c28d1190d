"""The `stronglens` command on toy stage notebooks (fast): decisions before papermill, one-screen failures, stage order
errors that create nothing, `-p` anywhere, `--dry-run`, and no orphan process after SIGKILL (issue 12, defects 7, 8, 11).

Each toy notebook appends a line to `<run>/kernel_log.txt` when it runs, so a test can tell whether a kernel started."""
import json, os, re, signal, subprocess, sys, time
from pathlib import Path
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("stronglens"))

SKY = '''from pathlib import Path
from stronglens.config import load_config
from stronglens.runs import stage_run
cfg = load_config(config_path)
with open(Path(run_dir) / "kernel_log.txt", "a") as f: f.write("sky\\n")
with stage_run(run_dir, "sky", cfg) as st:
    if not st.skip:
        Path(st.path("seed.txt")).write_text(str(cfg.sky.seed))
'''
CATALOGS = '''from pathlib import Path
from stronglens.config import load_config
from stronglens.runs import stage_run
cfg = load_config(config_path)
with open(Path(run_dir) / "kernel_log.txt", "a") as f: f.write("catalogs\\n")
with stage_run(run_dir, "catalogs", cfg) as st:
    if not st.skip:
        Path(st.path("manifest.txt")).write_text(Path(run_dir, "sky", "seed.txt").read_text())
'''
# a legacy stage (no protocol in its notebook): the command holds the protocol for it
LEGACY_CUTOUTS = '''from pathlib import Path
with open(Path(run_dir) / "kernel_log.txt", "a") as f: f.write("cutouts\\n")
(Path(run_dir) / "cutouts").mkdir(exist_ok=True)
(Path(run_dir) / "cutouts" / "a.npz").write_bytes(b"x" * 10)
'''
FAILING = '''from stronglens.config import load_config
from stronglens.runs import stage_run
cfg = load_config(config_path)
def deep(n):
    if n == 0: raise ValueError("the sweep file sweep-150p000-155p005.fits is truncated (expected 2880-byte blocks)")
    return deep(n - 1)
with stage_run(run_dir, "sky", cfg) as st:
    deep(60)
'''
# starts a grandchild, records the pids, then waits to be killed
SLEEPER = '''import os, subprocess, time
from pathlib import Path
child = subprocess.Popen(["sleep", "300"])
Path(run_dir).mkdir(parents=True, exist_ok=True)
(Path(run_dir) / "pids.txt").write_text(f"{os.getpid()} {child.pid}")
time.sleep(300)
'''


def _nb(path: Path, body: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('run_dir = "x"\nconfig_path = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    "A pipeline folder of toy notebooks and a config; yields (pipeline dir, config path, env)."
    pd = tmp_path / "pipeline"; pd.mkdir()
    _nb(pd / "00_sky.ipynb", SKY); _nb(pd / "01_catalogs.ipynb", CATALOGS); _nb(pd / "02_cutouts.ipynb", LEGACY_CUTOUTS)
    cfg = tmp_path / "toy.yaml"
    cfg.write_text("run: {name: toy, seed: 1}\nsky: {seed: 7}\n")
    env = {**os.environ, "STRONGLENS_PIPELINE_DIR": str(pd)}
    monkeypatch.setenv("STRONGLENS_PIPELINE_DIR", str(pd))
    return pd, cfg, env


@pytest.fixture(scope="module")
def toy_done(tmp_path_factory):
    "A finished toy run, made once for the module (kernels are the slow part); tests work on a `cp -r` copy."
    base = tmp_path_factory.mktemp("toydone")
    pd = base / "pipeline"; pd.mkdir()
    _nb(pd / "00_sky.ipynb", SKY); _nb(pd / "01_catalogs.ipynb", CATALOGS); _nb(pd / "02_cutouts.ipynb", LEGACY_CUTOUTS)
    cfg = base / "toy.yaml"; cfg.write_text("run: {name: toy, seed: 1}\nsky: {seed: 7}\n")
    env = {**os.environ, "STRONGLENS_PIPELINE_DIR": str(pd)}
    r = _run(["demo", str(base / "run"), "--config", str(cfg)], env)
    assert r.returncode == 0, r.stderr
    return base / "run", env, r.stdout


def _copy(toy_done, dst):
    subprocess.run(["cp", "-r", str(toy_done[0]), str(dst)], check=True)
    return dst, toy_done[1]


def _run(args, env, timeout=300, **kw):
    return subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)


def _kernels(run):
    f = run / "kernel_log.txt"
    return f.read_text().split() if f.exists() else []


def test_validate_in_an_empty_folder_is_a_short_error_and_creates_nothing(tmp_path):
    run = tmp_path / "nothing" / "here"
    r = _run(["run", "validate", "--run-dir", str(run)], os.environ)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) <= 3, r.stderr
    assert "Traceback" not in r.stderr and "stronglens run sky --run-dir" in r.stderr and "validate" in r.stderr
    assert not run.exists() and not run.parent.exists()


def test_run_skips_without_a_kernel_and_reruns_what_changed(toy, tmp_path):
    pd, cfg, env = toy
    run = tmp_path / "run"
    r = _run(["demo", str(run), "--config", str(cfg)], env)
    assert r.returncode == 0, r.stderr
    assert _kernels(run) == ["sky", "catalogs", "cutouts"]
    r = _run(["demo", str(run)], env)                             # the run's own config.yaml: everything up to date
    assert r.returncode == 0 and r.stdout.count("up to date; skipping") == 3, r.stdout
    assert _kernels(run) == ["sky", "catalogs", "cutouts"]       # no kernel was started
    # -p before OUT; the changed seed reruns sky and (its input changed) catalogs, saying so; cutouts reads only catalogs
    r = _run(["demo", "-p", "sky.seed", "8", str(run)], env)
    assert r.returncode == 0, r.stderr
    assert "sky.seed: 7 -> 8" in r.stdout and "cleared 1 files" in r.stdout and "input changed: sky" in r.stdout
    assert _kernels(run)[3:] == ["sky", "catalogs", "cutouts"]
    assert (run / "manifests" / "manifest.txt").read_text() == "8"


def test_demo_on_an_existing_run_uses_its_own_config(toy, tmp_path):
    pd, cfg, env = toy
    run = tmp_path / "run"
    assert _run(["demo", str(run), "--config", str(cfg), "-p", "sky.seed=5"], env).returncode == 0
    r = _run(["demo", str(run)], env)                             # before: configs/demo.yaml, then cleared every stage
    assert r.returncode == 0 and "using the run's own config" in r.stdout and "cleared" not in r.stdout, r.stdout
    assert (run / "sky" / "seed.txt").read_text() == "5"


def test_dry_run_lists_what_would_rerun_and_writes_nothing(toy_done, tmp_path):
    run, env = _copy(toy_done, tmp_path / "run")
    before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
    r = _run(["demo", str(run), "--dry-run", "-p", "sky.seed", "9"], env)
    assert r.returncode == 0, r.stderr
    lines = {l.split()[0]: l for l in r.stdout.splitlines() if l.startswith("  ")}
    assert "rerun" in lines["sky"] and "sky.seed: 7 -> 9" in lines["sky"]
    assert "rerun" in lines["catalogs"] and "sky" in lines["catalogs"]
    assert "rerun" in lines["cutouts"] and "upstream catalogs, sky reruns first" in lines["cutouts"]
    assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_stage_failure_is_one_screen_and_non_zero(toy, tmp_path):
    pd, cfg, env = toy
    _nb(pd / "00_sky.ipynb", FAILING)
    run = tmp_path / "run"
    r = _run(["run", "sky", "--run-dir", str(run), "--config", str(cfg)], env)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) <= 8, r.stderr                    # was ~140 lines of traceback
    assert "truncated" in lines[0] and "sweep-150p000-155p005.fits" in lines[0]
    assert any("00_sky.ipynb" in l for l in lines) and "Traceback" not in r.stderr
    m = json.loads((run / "sky" / "_stage.json").read_text())
    assert m["status"] == "failed" and "truncated" in m["error"]["message"]
    r2 = _run(["run", "catalogs", "--run-dir", str(run)], env)   # downstream refuses a failed upstream
    assert r2.returncode == 1 and "failed" in r2.stderr and len(r2.stderr.strip().splitlines()) <= 3
    assert not (run / "manifests").exists()


def test_unknown_stage_and_missing_p_value_are_usage_errors(tmp_path):
    r = _run(["run", "plot", "--run-dir", str(tmp_path / "r")], os.environ)
    assert r.returncode == 1 and "unknown stage 'plot'" in r.stderr and len(r.stderr.splitlines()) <= 2
    r = _run(["demo", str(tmp_path / "r"), "-p", "sky.seed"], os.environ)
    assert r.returncode == 2 and "expected a value" in r.stderr


def test_no_suggestion_of_options_the_cli_does_not_have():
    r = _run(["run", "--help"], os.environ)
    opts = {w.split("=")[0].rstrip(",") for w in r.stdout.split() if w.startswith("--")}
    from stronglens.cli import build_parser
    assert "--dry-run" in opts and "--force" in opts
    # every option an error message of the protocol or the command suggests exists
    import stronglens.runs as runs, stronglens.cli as cli, inspect, re
    src = inspect.getsource(runs) + inspect.getsource(cli)
    suggested = set(re.findall(r"`stronglens [^`]*?(--[a-z-]+)", src)) | set(re.findall(r"\bpass (--[a-z-]+)", src))
    assert suggested and suggested <= opts | {"--run-dir", "--config"}, suggested - opts


def _alive(pid):
    try:
        st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return st not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_sigkill_of_the_command_leaves_no_orphan(toy, tmp_path):
    pd, cfg, env = toy
    _nb(pd / "00_sky.ipynb", SLEEPER)
    run = tmp_path / "run"
    p = subprocess.Popen([EXE, "run", "sky", "--run-dir", str(run), "--config", str(cfg)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "pids.txt").exists() and time.time() < deadline: time.sleep(0.2)
    assert (run / "pids.txt").exists(), "the kernel did not start"
    kernel, child = map(int, (run / "pids.txt").read_text().split())
    assert _alive(kernel) and _alive(child)
    p.send_signal(signal.SIGKILL); p.wait()
    deadline = time.time() + 15
    while (_alive(kernel) or _alive(child)) and time.time() < deadline: time.sleep(0.2)
    try:
        assert not _alive(kernel), f"kernel {kernel} outlived the killed command"
        assert not _alive(child), f"process {child} started by the kernel outlived the killed command"
    finally:
        for pid in (kernel, child):
            if _alive(pid): os.kill(pid, signal.SIGKILL)
    m = json.loads((run / "sky" / "_stage.json").read_text())
    assert m["status"] == "running"
    from stronglens.runs import holder_alive, plan_stage
    from stronglens.config import load_config
    assert not holder_alive(m)
    assert plan_stage(run, "sky", load_config(run / "config.yaml")).action == "resume"


def test_dry_run_after_a_deleted_output(toy_done, tmp_path):
    "A resumed upstream regenerates the same bytes: the dry run says so instead of announcing reruns downstream."
    run, env = _copy(toy_done, tmp_path / "run")
    (run / "sky" / "seed.txt").unlink(); (run / "manifests" / "manifest.txt").unlink()
    r = _run(["demo", str(run), "--dry-run"], env)
    lines = {l.split()[0]: l for l in r.stdout.splitlines() if l.startswith("  ")}
    assert "resume" in lines["sky"] and "1 missing (seed.txt)" in lines["sky"], r.stdout
    assert "resume" in lines["catalogs"] and "manifest.txt" in lines["catalogs"] and "after sky resume" in lines["catalogs"], r.stdout
    assert "skip" in lines["cutouts"], r.stdout
    r = _run(["demo", str(run)], env)
    assert r.returncode == 0 and "[cutouts] up to date; skipping" in r.stdout, r.stdout


def test_every_stage_prints_how_long_it_took(toy_done):
    "Lead's review: stages whose runner holds the protocol itself (in the kernel) ended without a 'done in N s' line."
    out = toy_done[2]
    for stage in ("sky", "catalogs", "cutouts"):                                 # protocol in the kernel x2, legacy x1
        assert re.search(rf"^\[{stage}\] done in \d+\.\d s \(\d+ files, [\d.]+ MiB\)$", out, re.M), (stage, out)


def test_audit_command_is_dispatched_to_the_audit_module():
    "`stronglens audit ...` (issue 17) reaches `stronglens.audit.main` with its own flags, and is listed in the help."
    r = _run(["audit", "--help"], os.environ)
    assert r.returncode == 0 and "--scores" in r.stdout and "--model" in r.stdout, (r.stdout, r.stderr)
    assert "audit" in _run(["--help"], os.environ).stdout
    bad = _run(["audit", "--scores", "x.csv"], os.environ)                      # no RUN: audit's own usage error
    assert bad.returncode == 2 and "usage: stronglens audit" in bad.stderr, bad.stderr
