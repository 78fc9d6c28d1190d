"""Training with cutouts, manifest and out_dir on S3 (local moto server); the cache stays on local disk."""
import numpy as np
import pytest

from stronglens.config import exists, read_parquet
from stronglens.train import DatasetSection, TrainingConfig, TrainSection
from stronglens.data import AugmentSpec, write_synthetic_manifest
from stronglens.train import load_checkpoint, score, train_from_config

pytestmark = pytest.mark.s3


def test_train_and_score_on_s3(s3_bucket, tmp_path):
    root = f"s3://{s3_bucket}/run"
    man = write_synthetic_manifest(root, n=48, seed=2, arc_amp=2.0)
    assert man.s3_path.str.startswith("cutouts/").all()          # relative to the run folder, here an S3 prefix
    cfg = TrainingConfig(
        dataset=DatasetSection(parquet_path="", mode="unpaired_manifest", manifest_path=f"{root}/manifests/training_manifest.parquet",
                               preprocessing="raw_robust", seed=1, cache_dir=str(tmp_path / "cache")),
        augment=AugmentSpec(core_dropout_prob=0.0, az_shuffle_prob=0.0),
        train=TrainSection(epochs=1, batch_size=16, lr=1e-3, weight_decay=0.0, num_workers=0, device="cpu",
                           early_stopping_patience=1, out_dir=f"{root}/model", mixed_precision=False, arch="small"))
    res = train_from_config(cfg, root=root, progress=False)
    for f in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.csv", "metrics.json", "scores.parquet"):
        assert exists(f"{root}/model/{f}"), f
    assert load_checkpoint(f"{root}/model/checkpoints/best.pt")["epoch"] == 1
    test = read_parquet(f"{root}/model/scores.parquet")
    assert len(test) == (man.split == "test").sum()
    # rerun: finished, resumed from S3, not retrained; scoring from the S3 checkpoint re-uses the local cache
    again = train_from_config(cfg, root=root, progress=False)
    assert len(again.history) == 1
    full = score(res.best_checkpoint, cfg.dataset.manifest_path, cache_dir=str(tmp_path / "cache"), root=root, progress=False)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3          # train/val/test caches, keyed on the S3 ETags, re-used
    np.testing.assert_allclose(full[full.split == "test"].logit.to_numpy(), test.logit.to_numpy(), atol=1e-5)
    # regenerated pixels on S3 (same key, new ETag) -> a new cache for that split, new scores
    from stronglens.cutouts import write_cutout
    from stronglens.data import synthetic_cutouts
    k = int(man.index[man.split == "test"][0])
    write_cutout(f"{root}/{man.s3_path[k]}", synthetic_cutouts(1, seed=99)[0][0], {"galaxy_id": man.galaxy_id[k], "ra": 0.0, "dec": 0.0})
    again = score(res.best_checkpoint, cfg.dataset.manifest_path, splits=["test"], cache_dir=str(tmp_path / "cache"), root=root, progress=False)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4
    changed = again.galaxy_id == man.galaxy_id[k]
    assert not np.allclose(again.logit[changed], full.set_index("galaxy_id").loc[man.galaxy_id[k], "logit"])
    np.testing.assert_allclose(again.logit[~changed], full[full.split == "test"].set_index("galaxy_id").loc[again.galaxy_id[~changed]].logit, atol=1e-6)
