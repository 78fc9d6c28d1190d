"""stronglens.train: loss goes down, exact resume, early stopping, safe checkpoints, scoring, config entry point."""
import io
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import stronglens.train as T
from stronglens.train import AugmentSection, DatasetSection, TrainingConfig, TrainSection
from stronglens.data import (AugmentSpec, PackedSplit, PreprocessSpec, PreprocessingMismatchError, preprocess,
                             synthetic_cutouts, write_synthetic_manifest)
from stronglens.train import (CheckpointError, TrainSettings, evaluate, fit, load_checkpoint, make_loader, masked_bce,
                              score, train_from_config)
from stronglens.model import model_from_config, model_config


def _split(n, seed, split, **kw):
    X, y = synthetic_cutouts(n, seed, arc_amp=2.0, **kw)
    Xp, nn = preprocess(X)
    idx = pd.DataFrame(dict(galaxy_id=[f"{split}{seed}_{i}" for i in range(n)], label=y, split=split, n_nan=nn))
    return PackedSplit(Xp, idx, PreprocessSpec(), split)


@pytest.fixture(scope="module")
def data():
    return dict(train=_split(192, 0, "train", nan_fraction=0.05), val=_split(64, 1, "val"), test=_split(64, 2, "test"))


def test_tiny_training_lowers_loss(data, tmp_path):
    st = TrainSettings(arch="small", epochs=2, batch_size=32, lr=3e-3, seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(st.seed); init = model_from_config(model_config("small"))
    loss0 = evaluate(init, torch.device("cpu"), make_loader(data["val"], 64))["loss"]
    res = fit(data["train"], data["val"], str(tmp_path), st, AugmentSpec(), test_data=data["test"], device="cpu", progress=False)
    h = res.history
    assert len(h) == 2 and h.train_loss.iloc[1] < h.train_loss.iloc[0]
    assert h.val_loss.iloc[-1] < loss0
    # NaN stamps are left out of training; every epoch is in metrics.csv/json
    n_nan = int((data["train"].index.n_nan > 0).sum())
    assert n_nan > 0 and res.summary["n_train_used"] == len(data["train"]) - n_nan
    assert (h.n_train == len(data["train"]) - n_nan).all()
    csv = pd.read_csv(tmp_path / "metrics.csv")
    assert list(csv.epoch) == [1, 2] and {"train_loss", "train_auc", "train_acc", "val_loss", "val_auc", "val_acc"} <= set(csv.columns)
    assert len(pd.read_json(tmp_path / "metrics.json")) == 2
    # test split scored once with the best checkpoint
    sc = pd.read_parquet(res.scores_path)
    assert list(sc.columns[:5]) == ["galaxy_id", "split", "label", "logit", "p_lens"]
    assert len(sc) == 64 and (sc.split == "test").all()
    np.testing.assert_allclose(sc.p_lens, 1 / (1 + np.exp(-sc.logit.astype(np.float64))), rtol=1e-6)
    best = load_checkpoint(res.best_checkpoint)
    assert best["epoch"] == res.best_epoch and best["preprocessing"] == PreprocessSpec().to_dict()


def test_masked_bce_ignores_nonfinite():
    z = torch.tensor([1.0, float("nan"), -2.0, float("inf")])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss, n = masked_bce(z, y)
    assert n == 2 and torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy_with_logits(z[[0, 2]], y[[0, 2]]))


class _Kill(Exception):
    pass


def test_resume_equals_uninterrupted(data, tmp_path):
    tr, va = _split(64, 5, "train"), _split(32, 6, "val")
    st = TrainSettings(arch="small", epochs=3, batch_size=32, lr=2e-3, seed=7, aug_seed=8, early_stopping_patience=10)
    aug = AugmentSpec(az_shuffle_prob=0.3, core_dropout_prob=0.3, subpixel_shift_px=0.3)
    a = fit(tr, va, str(tmp_path / "a"), st, aug, device="cpu", progress=False)

    def kill(epoch, row):
        if epoch == 2:
            raise _Kill()
    with pytest.raises(_Kill):
        fit(tr, va, str(tmp_path / "b"), st, aug, device="cpu", progress=False, callbacks=[kill])
    assert load_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pt"))["epoch"] == 2
    b = fit(tr, va, str(tmp_path / "b"), st, aug, device="cpu", progress=False)
    ca, cb = load_checkpoint(a.last_checkpoint), load_checkpoint(b.last_checkpoint)
    assert ca["epoch"] == cb["epoch"] == 3
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    pd.testing.assert_frame_equal(a.history.drop(columns=["train_seconds", "train_images_per_s"]),
                                  b.history.drop(columns=["train_seconds", "train_images_per_s"]))
    # a different configuration does not silently resume
    with pytest.raises(CheckpointError, match="different run"):
        fit(tr, va, str(tmp_path / "b"), TrainSettings(**{**st.__dict__, "lr": 1e-3}), aug, device="cpu", progress=False)


def test_early_stopping_on_val_auc(data, tmp_path, monkeypatch):
    aucs = iter([0.60, 0.70, 0.65, 0.69, 0.99, 0.99])
    real = T.evaluate

    def scripted(model, device, loader, *a, **k):
        out = real(model, device, loader, *a, **k)
        out["auc"] = next(aucs)
        return out
    monkeypatch.setattr(T, "evaluate", scripted)
    tr, va = _split(32, 5, "train"), _split(16, 6, "val")
    res = fit(tr, va, str(tmp_path), TrainSettings(arch="small", epochs=6, batch_size=16, early_stopping_patience=2),
              device="cpu", progress=False)
    assert res.stopped_early and len(res.history) == 4
    assert res.best_epoch == 2 and res.best_val_auc == 0.70
    assert load_checkpoint(res.best_checkpoint)["epoch"] == 2
    assert list(res.history.is_best) == [True, True, False, False]
    # a stopped run is finished: running again trains nothing more
    res2 = fit(tr, va, str(tmp_path), TrainSettings(arch="small", epochs=6, batch_size=16, early_stopping_patience=2),
               device="cpu", progress=False)
    assert len(res2.history) == 4


def test_tampered_checkpoint_fails_safely(data, tmp_path):
    res = fit(_split(16, 5, "train"), _split(16, 6, "val"), str(tmp_path), TrainSettings(arch="small", epochs=1, batch_size=16),
              device="cpu", progress=False)
    ck = load_checkpoint(res.last_checkpoint)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    ck["model_config"] = Evil()
    p = tmp_path / "evil.pt"
    torch.save(ck, p)
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(str(p))
    with pytest.raises(CheckpointError):
        score(str(p), np.zeros((1, 101, 101, 3), np.float32))
    assert not marker.exists()
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a stronglens checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))


def test_train_from_config_and_score(tmp_path):
    man = write_synthetic_manifest(str(tmp_path), n=120, seed=3, arc_amp=2.0)
    cfg = TrainingConfig(
        dataset=DatasetSection(parquet_path="", mode="unpaired_manifest",
                               manifest_path=str(tmp_path / "manifests" / "training_manifest.parquet"),
                               preprocessing="raw_robust", seed=1),
        augment=AugmentSection(core_dropout_prob=0.0, az_shuffle_prob=0.0),
        train=TrainSection(epochs=1, batch_size=32, lr=2e-3, weight_decay=1e-4, num_workers=0, device="cuda",
                           early_stopping_patience=2, out_dir=str(tmp_path / "model"), mixed_precision=True, arch="small"))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = train_from_config(cfg, progress=False)
    if not torch.cuda.is_available():
        msgs = [str(x.message) for x in w if "CUDA" in str(x.message)]
        assert len(msgs) == 1 and "falling back to CPU" in msgs[0]
    assert (tmp_path / "model" / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "manifests" / "cache").is_dir()
    full = score(res.best_checkpoint, cfg.dataset.manifest_path, progress=False)
    assert len(full) == len(man) and set(full.split) == set(man.split)
    test = pd.read_parquet(res.scores_path)
    np.testing.assert_allclose(full[full.split == "test"].logit.to_numpy(), test.logit.to_numpy(), atol=1e-5)
    # raw cutouts scored with the checkpoint's preprocessing == manifest path
    X, _ = synthetic_cutouts(120, 3, arc_amp=2.0)
    raw = score(res.best_checkpoint, (X, man[["galaxy_id", "split", "label"]]), progress=False)
    np.testing.assert_allclose(raw.logit.to_numpy(), full.set_index("galaxy_id").loc[raw.galaxy_id].logit.to_numpy(), atol=1e-4)
    with pytest.raises(PreprocessingMismatchError):
        score(res.best_checkpoint, X[:2], preprocessing="residual")
    with pytest.raises(PreprocessingMismatchError):
        score(res.best_checkpoint, X[:2], preprocessing=PreprocessSpec(annulus_r_in_px=20, annulus_r_out_px=32))
    out = tmp_path / "s.parquet"
    score(res.best_checkpoint, cfg.dataset.manifest_path, splits=["val"], out=str(out), progress=False)
    assert set(pd.read_parquet(out).split) == {"val"}


def test_amp_and_channels_last_code_paths_on_cpu(tmp_path):
    "The CUDA options (autocast, channels_last) run through `train`/`evaluate`; here with CPU bf16 autocast."
    d = _split(32, 5, "train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = model_from_config(model_config("small")).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    out = T.train(m, torch.device("cpu"), make_loader(d, 16, shuffle=True), opt, 1, T.Augmenter(AugmentSpec(az_shuffle_prob=0.5)),
                  amp_dtype=torch.bfloat16, channels_last=True, progress=False)
    assert np.isfinite(out["loss"]) and out["n"] == 32
    ev = evaluate(m, torch.device("cpu"), make_loader(d, 16), amp_dtype=torch.bfloat16, channels_last=True)
    assert np.isfinite(ev["logits"]).all() and ev["logits"].dtype == np.float32
