"""spark-submit entry points (stronglens.scaleout) on local[2] against the local S3-compatible server: the catalog and
cutout stages of a mock-sky run folder on s3://, and the injection stage of a synthetic run on s3://, each under the
stage protocol (markers, provenance, a second submit skips what is done)."""
import json, os, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from stronglens.config import load_config, save_config, url_join, read_parquet, get_fs, read_bytes
from stronglens.runs import read_marker, get_stage
from stronglens.scaleout import script_path, submit_command

pytestmark = pytest.mark.slow
SMALL_SKY = ["sky.lens_density_scale=20"]          # the tiny footprint (2.5 x 2.5 deg), enough lenses for a manifest


def _submit(stages, run, tmp_path, *extra, timeout=1500) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("spark-submit")
    if not exe.exists(): pytest.skip("spark-submit not found beside the interpreter (pip install pyspark)")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    cmd = submit_command(stages, run, "local[2]", spark_submit=str(exe)) + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


def test_catalogs_and_cutouts_by_spark_submit_on_an_s3_run(s3_bucket, tmp_path):
    from stronglens.cli import default_config_path
    from stronglens.mocksky import run_sky_stage
    run = f"s3://{s3_bucket}/run"
    cfg = load_config(default_config_path("tiny"), SMALL_SKY)
    save_config(cfg, url_join(run, "config.yaml")); run_sky_stage(cfg, run, progress=False)
    r = _submit(["catalogs", "cutouts"], run, tmp_path, "-p", "cutouts.spark_partitions", "2")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "on Spark local[2] (2 cores)" in r.stdout
    for stage in ("catalogs", "cutouts"):
        m = read_marker(run, get_stage(stage))
        assert m["status"] == "done", (stage, m.get("error"))
    man = read_parquet(url_join(run, "manifests", "training_manifest.parquet"))
    fs, p = get_fs(url_join(run, "cutouts"))
    npz = {f.rsplit("/", 1)[-1] for f in fs.find(p) if f.endswith(".npz")}
    assert len(man) > 0 and set(man.s3_key) <= npz
    rep = json.loads(read_bytes(url_join(run, "manifests", "catalog_report.json")))
    assert rep["engine"] == "spark" and rep["provenance"]["inputs"]["stage:sky"]
    assert load_config(url_join(run, "config.yaml")).cutouts.engine == "spark"       # later runs read the same config
    again = _submit(["catalogs", "cutouts"], run, tmp_path, "-p", "cutouts.spark_partitions", "2")                              # the protocol skips finished stages
    assert again.returncode == 0 and again.stdout.count(": skip (up to date") == 2, again.stdout[-2000:]


def test_injection_by_spark_submit_on_an_s3_run(s3_bucket, tmp_path):
    from stronglens.injection import synthetic_stage_run
    run = f"s3://{s3_bucket}/inj"
    synthetic_stage_run(run, n=30, seed=1, injection={"n_per_cell": 3, "closure_k_neighbours": 3})
    r = _submit(["inject"], run, tmp_path, "--scorer", json.dumps({"kind": "oracle", "snr_cut": 6.0}))
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    m = read_marker(run, get_stage("inject"))
    assert m["status"] == "done" and m["result"]["n_injections"] > 0
    table = read_parquet(url_join(run, "injection", "completeness.parquet"))
    inj = read_parquet(url_join(run, "injection", "injections.parquet"))
    assert len(table) == 385 and table.n_injected.sum() == len(inj) > 0
    assert (inj.detected == (inj.arc_snr > 6.0)).all()                                 # the oracle's rule, through Spark
