"""Catalog stage with every input and output at s3:// URLs on a local moto server: written, read back, equal to local."""
import json
import pandas as pd
import pytest

from stronglens.config import read_parquet, read_bytes, get_fs, config_from_dict
from stronglens.negatives import synthetic_sky
from stronglens.manifest import run_catalog_stage, TRAINING_MANIFEST_COLUMNS
from stronglens.legacysurvey import read_sweep, load_known_lenses

pytestmark = pytest.mark.s3


def test_s3_round_trip(tmp_path, s3_bucket):
    run = tmp_path / "run"
    synthetic_sky(str(run / "sky"), n_per_file=15000, n_lenses=30, seed=8)
    fs, _ = get_fs(f"s3://{s3_bucket}")
    for f in (run / "sky").iterdir():
        fs.put(str(f), f"{s3_bucket}/r1/sky/{f.name}")
    s3run = f"s3://{s3_bucket}/r1"
    # the reader and the lens loader on S3 equal the local ones
    f0 = sorted((run / "sky").glob("sweep-*.fits"))[0]
    pd.testing.assert_frame_equal(read_sweep(f"{s3run}/sky/{f0.name}", chunk_rows=4000), read_sweep(str(f0)))
    pd.testing.assert_frame_equal(load_known_lenses(f"{s3run}/sky/known_lenses.csv"), load_known_lenses(str(run / "sky" / "known_lenses.csv")))
    conf = lambda sky: config_from_dict({"run": {"name": "s3"}, "catalogs": {"progress": False, "chunk_rows": 6000, "sweep_dir": sky},
                                         "negatives": {"stratification": {"negatives_per_positive": 10}}, "cutouts": {"source": "legacysurvey"}})
    out_s3 = run_catalog_stage(conf(f"{s3run}/sky"), s3run)
    run_catalog_stage(conf(str(run / "sky")), str(run))
    assert out_s3["report"]["morphology_catalog"] == 300 * 2      # "auto" found confusers.csv on S3
    for name in ("negative_pool.parquet", "positives.parquet", "positives_eval.parquet"):
        pd.testing.assert_frame_equal(read_parquet(f"{s3run}/manifests/{name}"), read_parquet(str(run / "manifests" / name)))
    tm = read_parquet(f"{s3run}/manifests/training_manifest.parquet")
    tl = read_parquet(str(run / "manifests" / "training_manifest.parquet"))
    assert {c: str(t) for c, t in tm.dtypes.items()} == TRAINING_MANIFEST_COLUMNS
    assert (tm.s3_path == "cutouts/" + tm.filename).all() and (tm.s3_key == tm.filename).all()    # run-relative, like a local run
    pd.testing.assert_frame_equal(tm, tl)
    leak = json.loads(read_bytes(f"{s3run}/manifests/leakage.json"))
    assert leak["passed"]
    assert run_catalog_stage(conf(f"{s3run}/sky"), s3run) == out_s3          # skipped: same config, same inputs
    assert json.loads(read_bytes(f"{s3run}/manifests/_stage.json"))["status"] == "done"
