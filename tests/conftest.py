"""Shared pytest fixtures: real third-party data in ../shared/data, a local S3 (moto) server on 127.0.0.1, and the two
reference runs (`tiny_run`, `demo_run`), each made once per session, also under pytest-xdist (one worker builds it under
a file lock, the others wait and reuse it)."""
import json, os, shutil, socket, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    "The read-only shared folder beside the checkout (real Legacy Surveys files); skip when absent."
    if not (SHARED / "data").is_dir():
        pytest.skip(f"real test data not found at {SHARED/'data'} (only present beside the project checkout)")
    return SHARED


@pytest.fixture(scope="session")
def shared_data(shared_dir) -> Path:
    return shared_dir / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3-compatible server on 127.0.0.1 (started here, stopped at the end of the session).

    Sets dummy AWS credentials and STRONGLENS_S3_ENDPOINT_URL so that `stronglens.config.get_fs("s3://...")` uses it.
    Yields the endpoint URL."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = _free_port()
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                          "STRONGLENS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      STRONGLENS_S3_ENDPOINT_URL=url, AWS_ENDPOINT_URL=url)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto_server did not start within 30 s")
    try:
        yield url
    finally:
        proc.terminate()
        try: proc.wait(timeout=10)
        except subprocess.TimeoutExpired: proc.kill()
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_endpoint):
    "A fresh, empty bucket on the local S3 server; yields its name."
    import uuid
    from stronglens.config import get_fs
    name = f"test-{uuid.uuid4().hex[:10]}"
    fs, _ = get_fs(f"s3://{name}")
    fs.mkdir(name)
    yield name


STRONGLENS = str(Path(sys.executable).with_name("stronglens"))


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder `build(folder)` fills once per test session: per process without xdist, else shared by the workers
    (the first builds it under a lock; a failed build leaves no `.built` stamp, so the next worker retries)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name); build(folder); return folder
    from filelock import FileLock
    folder = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True); folder.mkdir(parents=True)
            build(folder); (folder / ".built").write_text("ok")
    return folder


def _run_tiny(folder: Path):
    r = subprocess.run([STRONGLENS, "demo", str(folder / "run"), "--config", "tiny"], capture_output=True, text=True, timeout=3000)
    if r.returncode != 0:
        pytest.fail(f"the tiny reference run failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One uninterrupted `stronglens demo RUN --config tiny` (configs/tiny.yaml: a small sky, 2 epochs), made once per
    session through the command line. Tests copy it (`copy_run`) and never change it."""
    return built_once(tmp_path_factory, "tiny", _run_tiny) / "run"


def _run_demo(folder: Path):
    """The demo into folder/run. For iterating on the demo's tests only: STRONGLENS_TEST_DEMO_RUN=<a finished demo run>
    copies that run instead and lets the runner skip its stages (test_every_stage_ran then fails: nothing ran)."""
    from stronglens.cli import run_pipeline
    if os.environ.get("STRONGLENS_TEST_DEMO_RUN"): copy_run(Path(os.environ["STRONGLENS_TEST_DEMO_RUN"]), folder / "run")
    log = []
    res = run_pipeline(str(folder / "run"), str(ROOT / "configs" / "demo.yaml"), log=log.append)
    (folder / "result.json").write_text(json.dumps({"res": res, "log": log}, default=str))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The whole demo (configs/demo.yaml) through the stage runner, once per session: (run folder, the runner's
    per-stage results, its log lines). Tests read it and never change it (copy it first)."""
    folder = built_once(tmp_path_factory, "e2e", _run_demo)
    r = json.loads((folder / "result.json").read_text())
    return folder / "run", r["res"], r["log"]


_TWINS = {}                                       # run folder -> source_model_twin result, per worker process


@pytest.fixture(scope="session")
def clumpy_twin(demo_run, tmp_path_factory):
    """The demo run's model and Sérsic injections against its own planted test lenses (control) and against the same lenses
    with clumpy sources (`injection.source_model_twin`: one sky stage, no retraining; ~1.5 min on an idle 2-core CPU).
    Built once per worker process: as a module fixture it was torn down and built again (~6 min) inside the demo group."""
    from stronglens.injection import source_model_twin
    run, _, _ = demo_run
    if str(run) not in _TWINS: _TWINS[str(run)] = source_model_twin(str(run), str(tmp_path_factory.mktemp("twin") / "twin"))
    return _TWINS[str(run)]


def copy_run(src: Path, dst: Path) -> Path:
    "`cp -r src dst`, as a user copies a run folder (new mtimes everywhere)."
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return dst


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`): one group per test file (its module fixtures are built once), except
    that every test of the session's demo run goes to one group, scheduled first (it is the longest). `tryfirst`:
    pytest-xdist turns the marks into '@group' node ids in its own hook, which must run after this one (and it needs
    pytest<9.2, see settings.ini; tests/test_xdist_groups.py checks both)."""
    for it in items:
        it.add_marker(pytest.mark.xdist_group("demo_run" if "demo_run" in it.fixturenames else it.path.name))
    items.sort(key=lambda it: "demo_run" not in it.fixturenames)     # stable: file order kept otherwise


def pytest_assertrepr_compare(config, op, left, right):
    """Two long byte strings (file contents) that differ: say where, in a few lines (pytest's own diff of large bytes
    objects runs difflib over them for many minutes)."""
    if op == "==" and isinstance(left, (bytes, bytearray)) and isinstance(right, (bytes, bytearray)) and max(len(left), len(right)) > 256:
        first = next((i for i, (a, b) in enumerate(zip(left, right)) if a != b), min(len(left), len(right)))
        return [f"byte strings differ: lengths {len(left)} and {len(right)}, first difference at offset {first}"]
