"""The paper's figures from a small synthetic run: every file written, readable, with the expected panels and content."""
import io, json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stronglens import figures as F
from stronglens.report import (ReportConfig, build_report, detection_threshold, load_report_inputs, report_figures,
                               report_tables, scored_table, schematic_counts, synthetic_run)

# fig 2 has one panel per stratum bin present in the evaluation split (counted from the data in the test)
EXPECTED_PANELS = {"fig1_data_schematic": 1, "fig2_score_distributions": None, "fig3_selection_function": 3,
                   "fig4_failure_gallery": 16, "fig5_tierA_recall": 4, "fig6_reliability": 2, "fig7_roc_pr": 2,
                   "fig8_contaminant_fpr": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic-run")
    synthetic_run(str(d), n=240, seed=3)
    return str(d)


@pytest.fixture(scope="module")
def built(run):
    inp, cfg = load_report_inputs(run), ReportConfig()
    sc = scored_table(inp, cfg); th = detection_threshold(sc, cfg, inp.closure)
    tabs = report_tables(inp, sc, th, cfg)
    figs, extra = report_figures(inp, sc, th, tabs, cfg)
    return dict(inp=inp, sc=sc, th=th, tabs=tabs, figs=figs, extra=extra)


@pytest.fixture(scope="module")
def report(run):
    out = Path(run) / "report-figures"
    return out, build_report(load_report_inputs(run), str(out), ReportConfig(), log=lambda m: None)


def test_every_figure_file_exists_and_is_readable(report):
    out, rep = report
    assert set(rep["figures"]) == set(EXPECTED_PANELS)
    for name, f in rep["figures"].items():
        png, pdf = out / f["files"]["png"], out / f["files"]["pdf"]
        assert png.stat().st_size > 5_000 and pdf.stat().st_size > 5_000, name
        im = Image.open(png); im.verify()
        assert min(Image.open(png).size) > 300, name                      # 200 dpi, print size
        head, tail = pdf.read_bytes()[:5], pdf.read_bytes()[-64:]
        assert head == b"%PDF-" and b"%%EOF" in tail, name
        assert pdf.read_bytes().count(b"/Type /Page\n") + pdf.read_bytes().count(b"/Type /Page ") >= 1


def test_panel_counts(report, built):
    _, rep = report
    ev = built["sc"][built["sc"].split == "test"]
    expected = {**EXPECTED_PANELS, "fig2_score_distributions": sum(ev[c].nunique() for c in ("nobs_z_bin", "psf_bin", "depth_bin"))}
    assert {k: v["n_panels"] for k, v in rep["figures"].items()} == expected
    assert {k: F.n_panels(f) for k, f in built["figs"].items()} == expected


def test_pdf_fonts_embedded_as_truetype(report):
    out, rep = report
    pdf = (out / rep["figures"]["fig7_roc_pr"]["files"]["pdf"]).read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf                # TrueType (Type 42), no Type 3 fonts


def test_schematic_shows_the_runs_counts(built):
    inp, fig = built["inp"], built["figs"]["fig1_data_schematic"]
    text = " ".join(F.figure_texts(fig))
    m = inp.manifest
    assert f"{len(m):,} rows" in text
    te = m[m.split == "test"]
    assert f"{int(te.label.sum()):,} pos / {int((te.label == 0).sum()):,} neg" in text
    tier = inp.positives.tier.value_counts()
    assert f"Tier A: {tier['A']:,}" in text and f"Tier B: {tier['B']:,}" in text


def test_selection_function_marks_every_empty_cell(built):
    comp, fig = built["inp"].completeness, built["figs"]["fig3_selection_function"]
    shown = F.pick_depths(comp)
    hatched = [p for ax in fig.axes for p in ax.patches if p.get_label() == "empty"]
    assert len(hatched) == int((comp[comp.i_depth.isin(shown)].n_injected == 0).sum()) > 0
    # colour = completeness: the mesh of the first panel holds the table's values in grid order
    d = comp[comp.i_depth == shown[0]].sort_values(["i_psf", "i_theta_e"])
    arr = fig.axes[0].collections[0].get_array()
    np.testing.assert_allclose(np.ma.filled(arr, np.nan).ravel(), np.where(d.n_injected > 0, d.completeness, np.nan), equal_nan=True)


def test_gallery_shows_failures_only(built):
    sc, th = built["sc"], built["th"]["value"]
    fig = built["figs"]["fig4_failure_gallery"]
    ev = sc[sc.split == "test"]
    n_fn, n_fp = int(((ev.label == 1) & (ev.p_lens < th)).sum()), int(((ev.label == 0) & (ev.p_lens >= th)).sum())
    assert sum(len(a.images) for a in fig.axes[:8]) == min(8, n_fn)
    assert sum(len(a.images) for a in fig.axes[8:]) == min(8, n_fp)
    for a in fig.axes[:8]:
        if a.images: assert float(a.get_title().split()[0][2:]) < th            # "p=0.123 Tier A"
    for a in fig.axes[8:]:
        if a.images: assert float(a.get_title().split()[0][2:]) >= th


def test_contaminant_bars_equal_table4(built):
    t4, fig = built["tabs"]["table4_contaminant_fpr"], built["figs"]["fig8_contaminant_fpr"]
    widths = sorted(p.get_width() for p in fig.axes[0].patches)
    np.testing.assert_allclose(widths, sorted(t4.fpr.fillna(0)), rtol=0, atol=1e-12)


def test_reliability_curves_are_calibrations_tables(built):
    from sklearn.calibration import calibration_curve
    sc = built["sc"]; ev = sc[sc.split == "test"]
    before = built["extra"]["calibration"]["curves"]["before"]
    frac, mean = calibration_curve(ev.label, 1 / (1 + np.exp(-ev.logit.astype(float))), n_bins=10)
    np.testing.assert_allclose(before.fraction_positive, frac, atol=1e-12)
    np.testing.assert_allclose(before.mean_predicted, mean, atol=1e-6)


def test_bin_order_is_numeric():
    assert sorted(["11+", "6-10", "1-2", "3-5"], key=F.bin_sort_key) == ["1-2", "3-5", "6-10", "11+"]
    assert sorted([">=24.00", "unknown", "23.50-24.00", "<23.00", "23.00-23.50"], key=F.bin_sort_key) == \
        ["<23.00", "23.00-23.50", "23.50-24.00", ">=24.00", "unknown"]
