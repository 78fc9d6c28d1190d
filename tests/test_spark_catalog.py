"""The catalog stage on Spark (local[2]) equals the local engine row for row; S3 inputs read inside the tasks."""
import numpy as np
import pandas as pd
import pytest

from stronglens.config import read_parquet, get_fs, config_from_dict
from stronglens.negatives import NegativeSamplingConfig
from stronglens.negatives import CatalogConfig, synthetic_sky, resolve_catalog_paths, build_catalogs

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    from stronglens.spark import spark_session
    s = spark_session("local[2]")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    synthetic_sky(str(run / "sky"), n_per_file=12000, n_lenses=30, seed=5)
    (run / "sky" / "sweep-200p000-205p005.fits").write_bytes(b"not a fits file" * 300)   # an unusable file among them
    return run


@pytest.fixture(scope="module")
def neg():
    n = NegativeSamplingConfig(); n.stratification.negatives_per_positive = 10
    return n


def test_spark_equals_local(spark, sky, neg):
    from stronglens.spark import build_catalogs_spark
    ccfg = CatalogConfig(progress=False, chunk_rows=7000, engine="spark")
    paths = resolve_catalog_paths(ccfg, str(sky))
    loc = build_catalogs(ccfg, neg, paths)
    spk = build_catalogs_spark(ccfg, neg, paths, spark=spark, out_dir=str(sky / "spark_out"))
    assert len(loc.negatives) > 100 and len(loc.positives) + len(loc.positives_eval) == 30
    pd.testing.assert_frame_equal(loc.negatives.sort_values("galaxy_id").reset_index(drop=True),
                                  spk.negatives.sort_values("galaxy_id").reset_index(drop=True))
    pd.testing.assert_frame_equal(loc.positives, spk.positives)
    pd.testing.assert_frame_equal(loc.positives_eval, spk.positives_eval)
    assert len(loc.positives_eval) > 0
    pd.testing.assert_frame_equal(loc.unmatched, spk.unmatched)
    pd.testing.assert_frame_equal(loc.sampling, spk.sampling)
    assert loc.counts == spk.counts
    assert [p.as_dict() for p in loc.problems] == [p.as_dict() for p in spk.problems]
    assert any("sweep-200p000" in p.file for p in spk.problems)
    # Parquet partitioned by split
    parts = sorted(p.name for p in (sky / "spark_out" / "negative_pool_by_split").iterdir())
    assert parts == sorted(f"split={s}" for s in loc.negatives.split.unique())
    back = pd.read_parquet(sky / "spark_out" / "negative_pool_by_split")
    assert sorted(back.galaxy_id) == sorted(loc.negatives.galaxy_id)


def test_spark_stage_and_s3_inputs(spark, sky, neg, s3_bucket):
    from stronglens.manifest import run_catalog_stage
    fs, _ = get_fs(f"s3://{s3_bucket}")
    for f in (sky / "sky").iterdir():
        if f.suffix in (".fits", ".csv"): fs.put(str(f), f"{s3_bucket}/run/sky/{f.name}")
    # the sky holds one unreadable file of three: allowed here (max_failure_frac 0.5), so the stage ends done_with_failures
    cfg = config_from_dict({"run": {"name": "spark", "max_failure_frac": 0.5}, "catalogs": {"progress": False, "chunk_rows": 15000, "engine": "spark",
                                                                    "sweep_dir": f"s3://{s3_bucket}/run/sky"},
                            "negatives": {"stratification": {"negatives_per_positive": 10}}, "cutouts": {"source": "legacysurvey"}})
    out = run_catalog_stage(cfg, f"s3://{s3_bucket}/run", spark=spark)
    assert out["leakage"]["passed"] and out["report"]["engine"] == "spark"
    assert out["report"]["losses"]["files"] == {"lost": 1, "total": 3}
    s3_neg = read_parquet(f"s3://{s3_bucket}/run/manifests/negative_pool.parquet")
    local = build_catalogs(CatalogConfig(progress=False), neg, resolve_catalog_paths(CatalogConfig(), str(sky)))
    pd.testing.assert_frame_equal(s3_neg, local.negatives)
    assert fs.exists(f"{s3_bucket}/run/manifests/negative_pool_by_split/split=train/part-0.parquet")
    tm = read_parquet(f"s3://{s3_bucket}/run/manifests/training_manifest.parquet")
    assert (tm.s3_path == "cutouts/" + tm.filename).all()


def test_spark_equals_local_with_matching_and_fill(spark, sky, neg):
    "Magnitude/colour matching and fill_from_other_pool draw the same rows on Spark as locally."
    import copy
    from stronglens.spark import build_catalogs_spark
    n = copy.deepcopy(neg)
    # fine bins: some positives find no candidate in their cell, so their stratum falls back to an unmatched draw
    n.stratification.match_mag_r_bins = list(np.round(np.arange(17.5, 20.5, 0.05), 2))
    n.stratification.match_g_minus_r_bins = list(np.round(np.arange(0.5, 2.5, 0.05), 2))
    n.stratification.fill_from_other_pool = True
    ccfg = CatalogConfig(progress=False, chunk_rows=7000, engine="spark")
    paths = resolve_catalog_paths(ccfg, str(sky))
    loc, spk = build_catalogs(ccfg, n, paths), build_catalogs_spark(ccfg, n, paths, spark=spark)
    for a in ("negatives", "positives", "positives_eval", "sampling"):
        pd.testing.assert_frame_equal(getattr(loc, a), getattr(spk, a))
    assert {"mag_r_bin", "g_minus_r_bin", "extra"} <= set(spk.sampling.columns) and loc.sampling.extra.sum() > 0
    assert (loc.sampling.mag_r_bin == "any").any()
