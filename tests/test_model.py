"""stronglens.model: shapes, parameter counts against a hand count, summary table."""
import torch

from stronglens.model import (ARCHS, BasicBlock, architecture_summary, architecture_text, build_model, count_parameters,
                              model_config, model_from_config)


def _hand_count(cfg):
    "Parameters of LensResNet counted from the architecture description (conv weights + BN affine + head)."
    conv = lambda ci, co, k: ci * co * k * k
    bn = lambda c: 2 * c
    n = conv(3, cfg["stem_width"], 3) + bn(cfg["stem_width"])
    c = cfg["stem_width"]
    for w, nb, s in zip(cfg["widths"], cfg["blocks"], cfg["strides"]):
        for b in range(nb):
            ci, st = (c, s) if b == 0 else (w, 1)
            n += conv(ci, w, 3) + bn(w) + conv(w, w, 3) + bn(w)
            if st != 1 or ci != w:
                n += conv(ci, w, 1) + bn(w)
        c = w
    return n + c + 1


def test_shapes_and_parameter_counts():
    for arch, cfg in ARCHS.items():
        m = build_model(arch).eval()
        with torch.no_grad():
            out = m(torch.randn(3, 3, 101, 101))
        assert out.shape == (3,)
        assert count_parameters(m) == _hand_count(cfg)
        m2 = model_from_config(model_config(arch))
        assert count_parameters(m2) == count_parameters(m)
    assert count_parameters(build_model("small")) < 200_000 < 1_000_000 < count_parameters(build_model("resnet"))


def test_summary_table():
    m = build_model("resnet")
    df = architecture_summary(m)
    assert df.params.iloc[-1] == count_parameters(m) == df.params.iloc[:-1].sum()
    assert df.output_shape.iloc[0] == (32, 101, 101)
    assert tuple(df.output_shape.iloc[-4]) == (256, 7, 7)
    txt = architecture_text(m, "resnet")
    assert f"{count_parameters(m):,d} parameters" in txt and "BasicBlock" in txt
    assert m.training   # summary leaves the mode alone


def test_channels_last_and_grad():
    m = build_model("small").to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 101, 101).contiguous(memory_format=torch.channels_last)
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert isinstance(build_model("resnet").stages[0][0], BasicBlock)
