"""Issue 12 (defect 12): a normal, non-editable install runs the pipeline from any folder.

A wheel is built from a copy of the sources and installed into a fresh virtual environment (`--no-deps`; the
dependencies come from this environment's site-packages through a .pth file, so nothing is downloaded). From an
unrelated folder the installed `stronglens` finds its pipeline notebooks and configs inside the package and runs the
tiny demo's last stages (on a copy of the session's tiny run). Before the fix the wheel held only the .py files: "configs/demo.yaml: config file not found", and with
--config "stage notebook not found"."""
import json, os, shutil, site, subprocess, sys, sysconfig
from pathlib import Path
import pytest
from conftest import copy_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
SOURCES = ["setup.py", "settings.ini", "pyproject.toml", "MANIFEST.in", "README.md", "stronglens", "configs", "nbs/pipeline"]


def _copy_sources(dst: Path):
    "The files a wheel is built from (no run folders, no venv, no build litter)."
    ign = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "*.egg-info")
    for s in SOURCES:
        src = ROOT / s
        if src.is_dir(): shutil.copytree(src, dst / s, ignore=ign)
        else: (dst / s).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(src, dst / s)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    "A venv holding the stronglens wheel (and only that); returns its bin folder."
    tmp = tmp_path_factory.mktemp("install")
    src, wheels, venv = tmp / "src", tmp / "wheels", tmp / "venv"
    _copy_sources(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                   check=True, cwd=tmp, capture_output=True)
    whl = next(wheels.glob("stronglens-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies: this environment's site-packages, appended after the venv's own (its editable stronglens
    # finder is a .pth inside that folder, and .pth files of an appended path are not executed)
    Path(purelib, "_stronglens_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(whl)],
                   check=True, capture_output=True)
    return venv / "bin", Path(purelib), whl


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("STRONGLENS_PIPELINE_DIR", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_wheel_ships_notebooks_and_configs(installed):
    import zipfile
    _, _, whl = installed
    names = set(zipfile.ZipFile(whl).namelist())
    for nb in (ROOT / "nbs" / "pipeline").glob("*.ipynb"): assert f"stronglens/pipeline/{nb.name}" in names, nb.name
    for c in (ROOT / "configs").glob("*.yaml"): assert f"stronglens/configs/{c.name}" in names, c.name


def test_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    bin_, purelib, _ = installed
    out = subprocess.run([str(bin_ / "python"), "-c", "import stronglens, stronglens.cli as c; print(stronglens.__file__);"
                          "print(c.pipeline_dir()); print(c.default_config_path('tiny'))"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(purelib) for p in out), out
    assert Path(out[1], "00_sky.ipynb").exists() and Path(out[2]).exists()


def test_installed_demo_runs_from_another_folder(installed, tiny_run, tmp_path):
    """`stronglens demo RUN --config tiny` from an unrelated folder with the wheel: the shipped config is found by name,
    the finished stages of a copied tiny run are verified and skipped, and the stages removed from the copy run from
    the notebooks inside the package."""
    bin_, purelib, _ = installed
    cwd = tmp_path / "elsewhere"; cwd.mkdir()
    run = copy_run(tiny_run, cwd / "run")
    from stronglens.runs import read_marker, get_stage, PIPELINE_STAGES
    stages = [s for s in PIPELINE_STAGES if read_marker(run, get_stage(s))]
    redo = stages[-1:]                                            # the last stage runs from the wheel (CI time: one stage)
    for s in redo: shutil.rmtree(run / get_stage(s).folder); (run / "notebooks" / get_stage(s).notebook).unlink()
    r = subprocess.run([str(bin_ / "stronglens"), "demo", "run", "--config", "tiny"], cwd=cwd, env=_env(),
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert r.stdout.count("up to date; skipping") == len(stages) - len(redo), r.stdout
    for s in stages:
        assert (read_marker(run, get_stage(s)) or {}).get("status") in ("done", "done_with_failures"), s
        assert (run / "notebooks" / get_stage(s).notebook).exists(), s
    again = subprocess.run([str(bin_ / "stronglens"), "demo", "run"], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("up to date; skipping") == len(stages), again.stdout
