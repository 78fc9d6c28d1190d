"""Shared pytest fixtures: real third-party data in ../shared/data, a local S3 (moto) server on 127.0.0.1."""
import os, socket, subprocess, sys, time
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One uninterrupted `stronglens demo RUN --config tiny` (configs/tiny.yaml: a small sky, 2 epochs), made once per
    session through the command line. Tests copy it (`copy_run`) and never change it."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    r = subprocess.run([STRONGLENS, "demo", str(run), "--config", "tiny"], capture_output=True, text=True, timeout=3000)
    if r.returncode != 0:
        pytest.fail(f"the tiny reference run failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return run


def copy_run(src: Path, dst: Path) -> Path:
    "`cp -r src dst`, as a user copies a run folder (new mtimes everywhere)."
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return dst
