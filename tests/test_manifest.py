"""Training manifest (spec §2), leakage checks that must fail on doctored manifests, and the catalog stage outputs."""
import json
from types import SimpleNamespace
import numpy as np
import pandas as pd
import pytest

from stronglens.config import read_parquet
from stronglens.negatives import NegativeSamplingConfig
from stronglens.cutouts import cutout_filename
from stronglens.negatives import CatalogConfig, synthetic_sky, POOL_COLUMNS
from stronglens.manifest import (TRAINING_MANIFEST_COLUMNS, build_training_manifest, check_leakage, LeakageError, run_catalog_stage)
from stronglens.splits import assign_split_scalar, compute_healpix_scalar

SPEC_TRAINING = ["s3_key", "s3_path", "galaxy_id", "filename", "label", "cutout_type", "split", "ra", "dec"]


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    synthetic_sky(str(run / "sky"), n_per_file=20000, n_lenses=50, seed=3)
    neg = NegativeSamplingConfig(); neg.stratification.negatives_per_positive = 10
    cfg = SimpleNamespace(catalogs=CatalogConfig(progress=False, cutout_prefix="s3://bucket/demo/cutouts"), negatives=neg)
    out = run_catalog_stage(cfg, str(run))
    return run, cfg, out


def test_stage_writes_the_manifests(stage):
    run, cfg, out = stage
    m = run / "manifests"
    for f in ("negative_pool.parquet", "positives.parquet", "training_manifest.parquet", "leakage.json", "catalog_report.json",
              "stratification.csv", "sampling.csv", "unmatched_lenses.parquet", "dropped_lenses.parquet"):
        assert (m / f).exists(), f
    tm = read_parquet(str(m / "training_manifest.parquet"))
    assert list(tm.columns) == SPEC_TRAINING
    assert {c: str(t) for c, t in tm.dtypes.items()} == TRAINING_MANIFEST_COLUMNS
    pos, neg = read_parquet(str(m / "positives.parquet")), read_parquet(str(m / "negative_pool.parquet"))
    assert len(tm) == len(pos) + len(neg) and (tm.label == 1).sum() == len(pos)
    assert (tm.filename == [cutout_filename(g) for g in tm.galaxy_id]).all()
    assert (tm.s3_path == "s3://bucket/demo/cutouts/" + tm.filename).all() and (tm.s3_key == "demo/cutouts/" + tm.filename).all()
    assert set(tm.cutout_type[tm.label == 1]) == {"positive"} and set(tm.cutout_type[tm.label == 0]) == {"negative"}
    # every row's pixel and split from the spec's literal per-row functions
    alloc = dict(cfg.negatives.splits.allocations)
    both = pd.concat([pos, neg])
    for r in both.sample(200, random_state=0).itertuples():
        assert r.healpix_128 == compute_healpix_scalar(r.ra, r.dec, 128)
        assert r.split == assign_split_scalar(r.healpix_128, alloc, 42)
    j = tm.merge(both[["galaxy_id", "split", "ra", "dec"]], on="galaxy_id", suffixes=("", "_pool"))
    assert len(j) == len(tm) and (j.split == j.split_pool).all()
    leak = json.loads((m / "leakage.json").read_text())
    assert leak["passed"] and set(leak["checks"]) >= {"pixel_in_multiple_splits", "duplicate_galaxy_id", "null_healpix",
                                                      "null_split", "negative_near_known_lens", "split_not_from_pixel"}
    assert abs(sum(leak["split_fractions"]["all"].values()) - 1) < 1e-9
    rep = json.loads((m / "catalog_report.json").read_text())
    assert rep["known_lenses"]["dropped_from_positives"] == {"type_cluster": 1, "nosocs_cluster_catalog": 1, "duplicate_within_3arcsec": 1}
    assert rep["positives"]["unmatched"] == {"outside_sweep_footprint": 1}
    st = pd.read_csv(m / "stratification.csv")
    assert st.iloc[-1].positives == len(pos) and st.iloc[-1].negatives == len(neg)


def test_stage_skips_when_done_and_reruns_on_change(stage):
    run, cfg, out = stage
    assert run_catalog_stage(cfg, str(run))["skipped"]
    import copy
    cfg2 = copy.deepcopy(cfg); cfg2.negatives.stratification.negatives_per_positive = 5
    assert not run_catalog_stage(cfg2, str(run))["skipped"]
    run_catalog_stage(cfg, str(run), overwrite=True)


def _manifest_and_pool(stage):
    run, cfg, out = stage
    m = run / "manifests"
    tm = read_parquet(str(m / "training_manifest.parquet"))
    pool = pd.concat([read_parquet(str(m / "positives.parquet"))[list(POOL_COLUMNS)], read_parquet(str(m / "negative_pool.parquet"))])
    return tm, pool, out["result"].inputs.known_lenses


def test_leakage_one_pixel_in_two_splits_fails(stage):
    tm, pool, kl = _manifest_and_pool(stage)
    assert check_leakage(tm, pool=pool, known_lenses=kl)["passed"]
    # doctor: move one validation galaxy into a training pixel (pixel overlap, IDs all distinct)
    train_pix = pool.loc[pool.split == "train", "healpix_128"].iloc[0]
    victim = pool.loc[pool.split != "train", "galaxy_id"].iloc[0]
    bad = pool.copy(); bad.loc[bad.galaxy_id == victim, "healpix_128"] = train_pix
    with pytest.raises(LeakageError, match="pixel_in_multiple_splits: 1") as e:
        check_leakage(tm, pool=bad)
    assert e.value.report["checks"]["pixel_in_multiple_splits"]["examples"][0]["pixel"] == train_pix
    # the same leak carried in the manifest itself
    tm2 = tm.merge(pool[["galaxy_id", "healpix_128"]], on="galaxy_id")
    tm2.loc[tm2.galaxy_id == victim, "healpix_128"] = train_pix
    with pytest.raises(LeakageError, match="pixel_in_multiple_splits"):
        check_leakage(tm2)


def test_leakage_other_doctored_manifests_fail(stage):
    tm, pool, kl = _manifest_and_pool(stage)
    with pytest.raises(LeakageError, match="duplicate_galaxy_id: 1"):
        check_leakage(pd.concat([tm, tm.iloc[[3]]]), pool=pool)
    pos_ids = set(tm.galaxy_id[tm.label == 1])
    with pytest.raises(LeakageError, match="null_healpix: 3"):    # positives missing from the pool -> null pixel
        check_leakage(tm, pool=pool[~pool.galaxy_id.isin(list(pos_ids)[:3])])
    b = tm.copy(); b.loc[b.index[:2], "split"] = None
    with pytest.raises(LeakageError, match="null_split: 2"):
        check_leakage(b, pool=pool)
    b = tm.copy(); i = b.index[b.label == 0][0]; b.loc[i, "split"] = "val" if b.split[i] != "val" else "test"
    with pytest.raises(LeakageError, match="split_not_from_pixel: 1"):
        check_leakage(b, pool=pool, allocations={"train": .7, "val": .15, "test": .15})
    n = tm[tm.label == 0].iloc[0]
    lens = pd.DataFrame({"ra": [n.ra + 8 / 3600], "dec": [n.dec]})
    with pytest.raises(LeakageError, match="negative_near_known_lens: 1"):
        check_leakage(tm, pool=pool, known_lenses=pd.concat([kl[["ra", "dec"]], lens]))
    rep = check_leakage(tm, pool=pool, known_lenses=lens.assign(ra=n.ra + 12 / 3600), raise_on_error=True)
    assert rep["passed"]


@pytest.mark.slow
def test_pipeline_notebook_runs_with_papermill(tmp_path):
    import papermill as pm
    from pathlib import Path
    run = tmp_path / "run"
    synthetic_sky(str(run / "sky"), n_per_file=15000, n_lenses=30, seed=4)
    (run / "config.yaml").write_text("run: {name: t, seed: 1}\nnegatives: {stratification: {negatives_per_positive: 10}}\n"
                                     "catalogs: {progress: false}\n")
    nb = Path(__file__).resolve().parents[1] / "nbs" / "pipeline" / "01_catalogs.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters={"run_dir": str(run)}, kernel_name="python3",
                        language="python", progress_bar=False)
    assert json.loads((run / "manifests" / "leakage.json").read_text())["passed"]
    assert (run / "manifests" / "training_manifest.parquet").exists()
