"""stronglens.train: loss goes down, exact resume, early stopping, safe checkpoints, scoring, features and exports,
config entry point (leakage refused, pixels followed), the `train` stage (config paths honoured, relocatable run)."""
import json
import os
import shutil
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import stronglens.train as T
from stronglens.config import config_from_dict, resolve_path
from stronglens.cutouts import write_cutout
from stronglens.data import (AugmentSpec, PackedSplit, PreprocessSpec, PreprocessingMismatchError, preprocess,
                             synthetic_cutouts, write_synthetic_manifest)
from stronglens.manifest import LeakageError
from stronglens.model import model_from_config, model_config
from stronglens.train import (CheckpointError, DatasetSection, LensScorer, TrainingConfig, TrainSection, evaluate,
                              export_onnx, export_torchscript, fit, load_checkpoint, make_loader, masked_bce,
                              run_train_stage, score, train_from_config)


def TrainSettings(**kw):
    "Quick CPU settings for the tests (the spec's values otherwise)."
    return TrainSection.from_defaults(**{"device": "cpu", "num_workers": 0, **kw})


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
    res = fit(data["train"], data["val"], str(tmp_path), st, AugmentSpec(), test_data=data["test"], progress=False)
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
    st = TrainSettings(arch="small", epochs=3, batch_size=32, lr=2e-3, seed=7, early_stopping_patience=10)
    aug = AugmentSpec(az_shuffle_prob=0.3, core_dropout_prob=0.3, subpixel_shift_px=0.3)
    a = fit(tr, va, str(tmp_path / "a"), st, aug, aug_seed=8, progress=False)

    def kill(epoch, row):
        if epoch == 2:
            raise _Kill()
    with pytest.raises(_Kill):
        fit(tr, va, str(tmp_path / "b"), st, aug, aug_seed=8, progress=False, callbacks=[kill])
    assert load_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pt"))["epoch"] == 2
    b = fit(tr, va, str(tmp_path / "b"), st, aug, aug_seed=8, progress=False)
    ca, cb = load_checkpoint(a.last_checkpoint), load_checkpoint(b.last_checkpoint)
    assert ca["epoch"] == cb["epoch"] == 3
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    pd.testing.assert_frame_equal(a.history.drop(columns=["train_seconds", "train_images_per_s"]),
                                  b.history.drop(columns=["train_seconds", "train_images_per_s"]))
    # a different configuration does not silently resume
    with pytest.raises(CheckpointError, match="different run"):
        fit(tr, va, str(tmp_path / "b"), replace(st, lr=1e-3), aug, aug_seed=8, progress=False)
    with pytest.raises(CheckpointError, match="different run"):
        fit(tr, va, str(tmp_path / "b"), st, aug, aug_seed=9, progress=False)


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
              progress=False)
    assert res.stopped_early and len(res.history) == 4
    assert res.best_epoch == 2 and res.best_val_auc == 0.70
    assert load_checkpoint(res.best_checkpoint)["epoch"] == 2
    assert list(res.history.is_best) == [True, True, False, False]
    # a stopped run is finished: running again trains nothing more
    res2 = fit(tr, va, str(tmp_path), TrainSettings(arch="small", epochs=6, batch_size=16, early_stopping_patience=2),
               progress=False)
    assert len(res2.history) == 4


def test_tampered_checkpoint_fails_safely(data, tmp_path):
    res = fit(_split(16, 5, "train"), _split(16, 6, "val"), str(tmp_path), TrainSettings(arch="small", epochs=1, batch_size=16),
              progress=False)
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


def _cfg(tmp_path, **train_kw):
    return TrainingConfig(
        dataset=DatasetSection(parquet_path="", mode="unpaired_manifest",
                               manifest_path=str(tmp_path / "manifests" / "training_manifest.parquet"),
                               preprocessing="raw_robust", seed=1),
        augment=AugmentSpec(core_dropout_prob=0.0, az_shuffle_prob=0.0),
        train=TrainSection(**{**dict(epochs=1, batch_size=32, lr=2e-3, weight_decay=1e-4, num_workers=0, device="cuda",
                                     early_stopping_patience=2, out_dir=str(tmp_path / "model"), mixed_precision=True,
                                     arch="small"), **train_kw}))


def test_train_from_config_and_score(tmp_path):
    man = write_synthetic_manifest(str(tmp_path), n=120, seed=3, arc_amp=2.0)
    cfg = _cfg(tmp_path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = train_from_config(cfg, root=str(tmp_path), progress=False)
    if not torch.cuda.is_available():
        msgs = [str(x.message) for x in w if "CUDA" in str(x.message)]
        assert len(msgs) == 1 and "falling back to CPU" in msgs[0]
    assert (tmp_path / "model" / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "manifests" / "cache").is_dir()
    full = score(res.best_checkpoint, cfg.dataset.manifest_path, root=str(tmp_path), progress=False)
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
    score(res.best_checkpoint, cfg.dataset.manifest_path, splits=["val"], out=str(out), root=str(tmp_path), progress=False)
    assert set(pd.read_parquet(out).split) == {"val"}


def test_num_threads_applies_while_training_and_is_restored(tmp_path):
    "`train.num_threads` (1 is several times faster on a busy machine) holds during training; the caller's setting comes back."
    write_synthetic_manifest(str(tmp_path), n=60, seed=4, arc_amp=2.0)
    before, seen = torch.get_num_threads(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_from_config(_cfg(tmp_path, num_threads=1, device="cpu"), root=str(tmp_path), progress=False,
                          callbacks=[lambda epoch, row: seen.append(torch.get_num_threads())])
    assert seen == [1] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="train.num_threads"):
        TrainSection.from_defaults(num_threads=-1)


def test_scores_follow_regenerated_cutouts(tmp_path):
    "12.2 end to end: new pixels under the same files and ids -> new cache, new scores (the model sees the new pixels)."
    man = write_synthetic_manifest(str(tmp_path), n=80, seed=4, arc_amp=2.0)
    cfg = _cfg(tmp_path, device="cpu")
    res = train_from_config(cfg, root=str(tmp_path), progress=False)
    before = score(res.best_checkpoint, cfg.dataset.manifest_path, root=str(tmp_path), progress=False)
    Xnew, _ = synthetic_cutouts(80, seed=41, arc_amp=2.0)
    for k in range(len(man)):
        write_cutout(resolve_path(str(tmp_path), man.s3_path[k]), Xnew[k], {"galaxy_id": man.galaxy_id[k], "ra": 0.0, "dec": 0.0})
    after = score(res.best_checkpoint, cfg.dataset.manifest_path, root=str(tmp_path), progress=False)
    direct = score(res.best_checkpoint, (Xnew, man[["galaxy_id", "split", "label"]]), progress=False)
    key = lambda d: d.set_index("galaxy_id").loc[man.galaxy_id].logit.to_numpy()
    assert not np.allclose(key(after), key(before))
    np.testing.assert_allclose(key(after), key(direct), atol=1e-4)
    # retraining on the new pixels does not resume the old run's checkpoint
    with pytest.raises(CheckpointError, match="different run"):
        train_from_config(cfg, root=str(tmp_path), progress=False)


def test_leaking_manifest_refused_before_training(tmp_path):
    "12.11: train_from_config repeats the leakage checks; nothing is built or trained on a leaking manifest."
    man = write_synthetic_manifest(str(tmp_path), n=40, seed=5)
    leaky = pd.concat([man, man.iloc[[0]]], ignore_index=True)
    mp = tmp_path / "manifests" / "training_manifest.parquet"
    leaky.to_parquet(mp)
    with pytest.raises(LeakageError, match=r"training_manifest\.parquet: refusing a leaking training manifest.*duplicate_galaxy_id"):
        train_from_config(_cfg(tmp_path, device="cpu"), root=str(tmp_path), progress=False)
    two = man.copy()
    i, j = two.index[two.split == "train"][0], two.index[two.split == "val"][0]
    two.loc[j, ["ra", "dec"]] = two.loc[i, ["ra", "dec"]].to_numpy()
    two.to_parquet(mp)
    with pytest.raises(LeakageError, match="pixel_in_multiple_splits"):
        train_from_config(_cfg(tmp_path, device="cpu"), root=str(tmp_path), progress=False)
    man.assign(split=man.split.where(man.index != 1)).to_parquet(mp)
    with pytest.raises(ValueError, match="null split/label"):
        train_from_config(_cfg(tmp_path, device="cpu"), root=str(tmp_path), progress=False)
    assert not (tmp_path / "model").exists() and not (tmp_path / "manifests" / "cache").exists()


def test_features_and_exported_models_score_identically(data, tmp_path):
    "LensScorer.features (feature probe) and TorchScript/ONNX exports of a checkpoint scoring within 1e-5."
    res = fit(data["train"], data["val"], str(tmp_path), TrainSettings(arch="small", epochs=1, batch_size=32), progress=False)
    sc = LensScorer.from_checkpoint(res.best_checkpoint)
    X, _ = synthetic_cutouts(40, 9, arc_amp=2.0, nan_fraction=0.1)
    f = sc.features(X)
    assert f.shape == (40, 64) and f.dtype == np.float32
    with torch.no_grad():
        head = sc.model.head(torch.from_numpy(f)).squeeze(1).numpy()
    np.testing.assert_allclose(head, sc.predict(X), atol=1e-5)
    # an independent path: the network's layers applied by hand to the preprocessed input
    m = sc.model
    with torch.no_grad():
        ref = torch.flatten(m.pool(m.stages(m.stem(torch.from_numpy(preprocess(X)[0])))), 1).numpy()
    np.testing.assert_allclose(f, ref, atol=1e-5)
    ts = LensScorer.from_torchscript(export_torchscript(res.best_checkpoint, str(tmp_path / "finder.ts")))
    assert ts.spec == sc.spec
    np.testing.assert_allclose(ts.predict(X), sc.predict(X), atol=1e-5)
    np.testing.assert_allclose(ts.features(X), f, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = export_onnx(res.best_checkpoint, str(tmp_path / "finder.onnx"))
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert PreprocessSpec.from_dict(json.loads(meta["stronglens.preprocessing"])) == sc.spec
    Xp = preprocess(X, sc.spec)[0]
    np.testing.assert_allclose(ort.InferenceSession(path).run(None, {"x": Xp})[0], sc.logits_from_input(Xp), atol=1e-5)


def test_one_train_section(tmp_path):
    "13.4: one hyperparameter class (TrainSection) with one set of defaults; a config's keys all reach `fit`."
    assert not hasattr(T, "TrainSettings") and not hasattr(T, "AugmentSection")
    assert TrainSection.from_defaults().arch == "resnet"
    raw = {"dataset": {"parquet_path": "", "mode": "unpaired_manifest", "manifest_path": "m.parquet", "preprocessing": "raw_robust", "seed": 5},
           "augment": {"core_dropout_prob": 0.25, "az_shuffle_prob": 0.5, "subpixel_shift_px": 0.3, "core_dropout_radius_px": 4.0},
           "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.0, "num_workers": 0, "device": "cpu",
                     "early_stopping_patience": 1, "out_dir": "o", "mixed_precision": False, "arch": "small", "drop_nan_train": False}}
    cfg = config_from_dict(raw, schema=TrainingConfig)
    d = PackedSplit(preprocess(synthetic_cutouts(16, 1)[0])[0], pd.DataFrame({"galaxy_id": list("abcdefghijklmnop"), "label": [0, 1] * 8,
                                                                            "n_nan": [1] + [0] * 15}), PreprocessSpec(), "train")
    res = fit(d, d, str(tmp_path), cfg.train, cfg.augment, aug_seed=cfg.dataset.seed, progress=False)
    ck = load_checkpoint(res.last_checkpoint)
    assert ck["augment"] == raw["augment"] | {"flips": True, "rot90": True}
    assert ck["settings"]["drop_nan_train"] is False and ck["settings"]["aug_seed"] == 5 and res.summary["n_train_used"] == 16
    for bad in ({"lr": float("nan")}, {"lr": float("inf")}, {"weight_decay": float("nan")}, {"arch": "vgg"}):
        with pytest.raises(Exception, match="train"):
            config_from_dict({**raw, "train": {**raw["train"], **bad}}, schema=TrainingConfig)


def _stage_cfg(**training):
    d = {"run": {"name": "t", "seed": 1},
         "training": {"dataset": {"parquet_path": "", "mode": "unpaired_manifest", "manifest_path": "", "preprocessing": "raw_robust", "seed": 3},
                      "augment": {"core_dropout_prob": 0.0, "az_shuffle_prob": 0.0},
                      "train": {"epochs": 2, "batch_size": 32, "lr": 3e-3, "weight_decay": 1e-4, "num_workers": 0, "device": "cpu",
                                "early_stopping_patience": 2, "out_dir": "", "mixed_precision": False, "arch": "small"}}}
    for k, v in training.items():
        sec, key = k.split(".")
        d["training"][sec][key] = v
    return config_from_dict(d)


def _fake_upstream(run, cfg, n=120, seed=3):
    "Sky, catalogs and cutouts stages done (under the stage protocol) with a synthetic manifest and its NPZ files."
    from stronglens.runs import stage_run
    src = str(run) + "-src"
    man = write_synthetic_manifest(src, n=n, seed=seed, arc_amp=2.0)
    with stage_run(str(run), "sky", cfg, log=lambda m: None) as st:
        pass
    with stage_run(str(run), "catalogs", cfg, log=lambda m: None) as st:
        shutil.copytree(os.path.join(src, "manifests"), st.out, dirs_exist_ok=True)
    with stage_run(str(run), "cutouts", cfg, log=lambda m: None) as st:
        shutil.copytree(os.path.join(src, "cutouts"), st.out, dirs_exist_ok=True)
    shutil.rmtree(src)
    return man


@pytest.mark.slow
def test_train_stage_honours_config_paths_and_reads_the_runs_cutouts(tmp_path):
    "12.9: training.dataset.manifest_path and training.train.out_dir are honoured (relative to the run); a copied run reads its own cutouts."
    run = tmp_path / "run"
    cfg = _stage_cfg()
    man = _fake_upstream(run, cfg)
    r = run_train_stage(cfg, str(run), progress=False)
    assert r["out_dir"] == "model" and r["n_scored"] == len(man)
    sa = pd.read_parquet(run / "model" / "scores_all.parquet")
    assert list(sa.columns) == ["galaxy_id", "split", "label", "logit", "p_lens", "n_nan"] and len(sa) == len(man)
    assert (run / "cache").is_dir() and not (run / "manifests" / "cache").exists()
    assert run_train_stage(cfg, str(run), progress=False) == r                  # nothing changed: skipped
    # another manifest (a subset, relative to the run) and another out_dir, both from the config
    sub = man[man.index % 2 == 0]
    sub.to_parquet(run / "manifests" / "subset.parquet")
    cfg2 = _stage_cfg(**{"dataset.manifest_path": "manifests/subset.parquet", "train.out_dir": "finder"})
    r2 = run_train_stage(cfg2, str(run), progress=False)
    assert r2["out_dir"] == "finder" and r2["n_scored"] == len(sub)
    assert set(pd.read_parquet(run / "finder" / "scores_all.parquet").galaxy_id) == set(sub.galaxy_id)
    assert (run / "finder" / "checkpoints" / "best.pt").exists()
    # the run folder moved elsewhere: its manifest paths are relative, so the copy reads its own cutouts
    shutil.copytree(run, tmp_path / "copy")
    shutil.rmtree(run / "cutouts")
    r3 = run_train_stage(cfg2, str(tmp_path / "copy"), progress=False)
    assert r3["n_scored"] == len(sub)


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


def _torch_lrs(make_scheduler, n_steps, lr):
    "The lr torch's own scheduler gives each of `n_steps` optimiser steps."
    opt = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=lr)
    sch, out = make_scheduler(opt), []
    for _ in range(n_steps):
        out.append(opt.param_groups[0]["lr"]); opt.step(); sch.step()
    return np.array(out)


def test_scheduled_lr_follows_torchs_cosine_and_linear_warmup():
    "`scheduled_lr` equals torch's CosineAnnealingLR (after a LinearLR warm-up) step by step; constant stays constant."
    cos = TrainSettings(epochs=5, lr=3e-3, lr_schedule="cosine", min_lr_fraction=0.02)
    ours = [T.scheduled_lr(cos, k, 7) for k in range(35)]
    np.testing.assert_allclose(ours, _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=35, eta_min=6e-5), 35, 3e-3), rtol=1e-12)
    warm = replace(cos, warmup_epochs=1.0)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
        torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / 7, total_iters=6),
        torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=28, eta_min=6e-5)], milestones=[7]), 35, 3e-3)
    np.testing.assert_allclose([T.scheduled_lr(warm, k, 7) for k in range(35)], ref, rtol=1e-12)
    assert {T.scheduled_lr(TrainSettings(lr=3e-3), k, 7) for k in range(35)} == {3e-3}
    with pytest.raises(ValueError, match="train.lr_schedule"):
        TrainSettings(lr_schedule="step")


def test_fit_applies_the_schedule_per_batch_and_resumes_on_it(data, tmp_path):
    "metrics.csv's lr of each epoch = the schedule's lr at that epoch's last batch; a killed cosine run resumes bitwise."
    tr, va = _split(64, 5, "train"), _split(32, 6, "val")
    st = TrainSettings(arch="small", epochs=3, batch_size=16, lr=4e-3, seed=7, early_stopping_patience=10,
                       lr_schedule="cosine", warmup_epochs=1.0, min_lr_fraction=0.1, pos_weight=3.0)
    a = fit(tr, va, str(tmp_path / "a"), st, AugmentSpec(), progress=False)
    np.testing.assert_allclose(a.history.lr, [T.scheduled_lr(st, 4 * e - 1, 4) for e in (1, 2, 3)], rtol=1e-12)
    assert a.history.lr.iloc[2] < a.history.lr.iloc[1] < a.history.lr.iloc[0] == st.lr    # warm-up ends at lr, then decays

    def kill(epoch, row):
        if epoch == 1: raise _Kill()
    with pytest.raises(_Kill):
        fit(tr, va, str(tmp_path / "b"), st, AugmentSpec(), progress=False, callbacks=[kill])
    b = fit(tr, va, str(tmp_path / "b"), st, AugmentSpec(), progress=False)
    ca, cb = load_checkpoint(a.last_checkpoint), load_checkpoint(b.last_checkpoint)
    for k in ca["model"]: assert torch.equal(ca["model"][k], cb["model"][k]), k
    # the schedule and the loss weight are part of a run's identity; a cosine run's `epochs` too
    for other in (replace(st, lr_schedule="constant"), replace(st, pos_weight=1.0), replace(st, epochs=4)):
        with pytest.raises(CheckpointError, match="different run"):
            fit(tr, va, str(tmp_path / "b"), other, AugmentSpec(), progress=False)


def test_pos_weight_weights_the_positive_terms():
    z, y = torch.tensor([0.3, -1.2, 2.0, float("nan")]), torch.tensor([1.0, 0.0, 1.0, 1.0])
    loss, n = masked_bce(z, y, pos_weight=5.0)
    sp = torch.nn.functional.softplus
    ref = torch.stack([5.0 * sp(-z[0]), sp(z[1]), 5.0 * sp(-z[2])]).mean()
    assert n == 3
    torch.testing.assert_close(loss, ref)
