"""The test scheduling of `make test` (pytest-xdist, `--dist loadgroup`, tests/conftest.py): every test of the demo run
in one group, every other test file its own group. Checked on a small throw-away suite that uses our conftest's hook:
pytest 9.2 with pytest-xdist 3.8 silently dropped the groups (each worker then built the demo run's clumpy twin, and one
waited ~10 min on the demo's lock)."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


def test_loadgroup_puts_the_demo_tests_in_one_group_and_each_file_in_its_own(tmp_path):
    pytest.importorskip("xdist")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util, pytest
        _spec = importlib.util.spec_from_file_location("stronglens_tests_conftest", {str(CONFTEST)!r})
        _mod = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(_mod)
        pytest_collection_modifyitems = _mod.pytest_collection_modifyitems
        @pytest.fixture(scope="session")
        def demo_run(): return "run"
        """))
    body = textwrap.dedent("""
        import json, os
        def _log(request, out):
            with open(out, "a") as f: f.write(json.dumps([request.node.nodeid, os.environ.get("PYTEST_XDIST_WORKER")]) + "\\n")
        def test_plain(request): _log(request, OUT)
        def test_demo(request, demo_run): _log(request, OUT)
        """)
    out = tmp_path / "ids.jsonl"
    for name in ("test_a.py", "test_b.py", "test_c.py"):
        (tmp_path / name).write_text(f"OUT = {str(out)!r}\n" + body)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
                        str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6
    for nodeid, _ in rows:
        fname, test = nodeid.split("::")
        want = "demo_run" if test.startswith("test_demo") else Path(fname).name
        assert nodeid.endswith(f"@{want}"), f"{nodeid!r} is not in the group {want!r}: pytest-xdist's loadgroup is not applied"
    assert len({w for nodeid, w in rows if "test_demo" in nodeid}) == 1, rows   # the demo's tests share one worker
