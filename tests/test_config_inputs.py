"""Issue 12 (defects 10, 11): config inputs that used to slip through, and output file modes.

Each test failed on the code before the fix: `.nan`/`.inf` were accepted for `lr`, a duplicated key silently kept the
last value, and every atomically written output was mode 0600 whatever the umask."""
import re
import os, stat, subprocess, sys
from pathlib import Path
import pytest
import yaml
from stronglens.config import ConfigError, load_config, dump_config, atomic_write_text, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


@pytest.mark.parametrize("value", [".nan", ".inf", ".NaN"])
@pytest.mark.parametrize("key", ["training.train.lr", "training.train.weight_decay", "sky.ra_min_deg", "cutouts.timeout_s"])
def test_non_finite_numbers_are_refused(tmp_path, key, value):
    data = yaml.safe_load(DEMO.read_text())
    d = data
    *parents, leaf = key.split(".")
    for p in parents: d = d.setdefault(p, {})
    d[leaf] = "__X__"
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(data).replace("__X__", value))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert key in str(e.value) and "finite" in str(e.value) and str(f) in str(e.value)


def test_non_finite_override_is_refused():
    with pytest.raises(ConfigError, match="training.train.lr: expected a finite number"):
        load_config(DEMO, ["training.train.lr=.nan"])


def test_duplicated_key_is_an_error_naming_key_and_file(tmp_path):
    f = tmp_path / "dup.yaml"
    text, n = re.subn(r"(?m)^(    lr: .+)$", r"\1\n    lr: 1e-5", DEMO.read_text())    # the training lr, repeated
    assert n == 1 and text.count("lr: ") == 2
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert str(f) in msg and "lr" in msg and "duplicated key" in msg and len(msg.splitlines()) == 1


def test_duplicated_section_is_an_error(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text(DEMO.read_text() + "\nrun:\n  seed: 7\n")
    with pytest.raises(ConfigError, match=r"run: duplicated key"):
        load_config(f)


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("base: &b {seed: 1, name: x}\n")        # anchors/merges still load (merge keys are not duplicates)
    raw = yaml.load("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n", Loader=__import__("stronglens.config", fromlist=["_"])._UniqueKeyLoader)
    assert raw["b"]["x"] == 2


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027])
def test_outputs_honour_the_umask(tmp_path, umask):
    # a child process, so the test's own umask is untouched
    code = ("import os, sys; os.umask(int(sys.argv[2], 8)); from stronglens.config import atomic_write_text, atomic_write_json;"
            "atomic_write_text(sys.argv[1] + '/a.txt', 'x'); atomic_write_json(sys.argv[1] + '/sub/b.json', {})")
    subprocess.run([sys.executable, "-c", code, str(tmp_path), oct(umask)], check=True)
    for f in (tmp_path / "a.txt", tmp_path / "sub" / "b.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, (f, oct(f.stat().st_mode))


def test_saved_run_config_is_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        from stronglens.config import save_config
        save_config(load_config(DEMO), tmp_path / "config.yaml")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == 0o644


def test_pep604_optional_fields_are_accepted():
    "`int | None` annotations (types.UnionType) validate like Optional[int] (they were always refused)."
    from dataclasses import dataclass
    from stronglens.config import from_dict

    @dataclass
    class C:
        n: int | None = None
        x: float | None = 1.0

    assert from_dict(C, {"n": 3}).n == 3 and from_dict(C, {"n": None}).n is None and from_dict(C, {"x": 2}).x == 2.0
    with pytest.raises(ConfigError, match=r"n: expected int \| None"):
        from_dict(C, {"n": "a"})
    with pytest.raises(ConfigError, match="finite"):
        from_dict(C, {"x": float("nan")})
