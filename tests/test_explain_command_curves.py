"""explain.py's ranking pictures' contrast row and its deletion / insertion curves (``--deletion_steps``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import explain
from cama.errors import InputError
from tests.test_explain_command import CONFIG, TINY_DATA, checkpoint, png_size  # noqa: F401 (a fixture)


def test_the_contrast_row_is_drawn_by_default_where_a_false_match_comes_first(checkpoint, tmp_path):  # noqa: F811
    def run(*extra: str) -> tuple[list[Path], dict]:
        out = tmp_path / ("off" if extra else "on")
        written = explain.main([
            "--checkpoint", str(checkpoint), "--config", str(CONFIG), "--data", *TINY_DATA,
            "--methods", "ram", "--top_k", "3", "--num_queries", "4", "--output", str(out), "--no_progress",
            *extra,
        ])
        return written, json.loads((out / "rankings.json").read_text())

    (on, rankings), (off, same) = run(), run("--no_contrastive")
    assert rankings == same  # the top k only, the true match appended for the row is not listed
    for with_row, without in zip(on, off):
        first_false = not rankings[without.stem.removesuffix("_ram")][0]["match"]
        (h1, w1), (h0, w0) = png_size(with_row), png_size(without)
        assert (h1 > h0 + 128 and w1 >= w0) if first_false else (h1, w1) == (h0, w0)
    assert any(not entries[0]["match"] for entries in rankings.values())  # the case is exercised


def test_deletion_curves_of_the_queries_plotted_and_summed_up(checkpoint, tmp_path):  # noqa: F811
    """``--deletion_steps``: curves.png (deletion | insertion, one row per score) and curves.json, whose
    AUCs are the trapezoids of its mean curves (the mean of the AUCs, by linearity), the curves' ends
    shared (the intact query starts deletion and ends insertion, the fully removed one the reverse)."""
    out = tmp_path / "out"
    written = explain.main(
        ["--checkpoint", str(checkpoint), "--config", str(CONFIG), "--data", *TINY_DATA, "--methods", "ram",
         "dist_cam", "--top_k", "2", "--num_queries", "2", "--output", str(out), "--no_progress",
         "--deletion_steps", "3", "--deletion_baseline", "mean"]
    )
    assert written[-1] == out / "curves.png" and len(written) == 2 * 2 + 1
    height, width = png_size(written[-1])
    assert height > width > 0  # three rows of scores, two columns
    summary = json.loads((out / "curves.json").read_text())
    assert summary["queries"] == 2 and summary["steps"] == 3 and summary["baseline"] == "mean"
    assert list(summary["maps"]) == ["ram", "dist_cam", "random", "center_prior"]
    for values in summary["maps"].values():
        for s, score in enumerate(("", "_ap", "_rr")):
            deletion, insertion = values["deletion_curve"][s], values["insertion_curve"][s]
            assert len(deletion) == 4 and deletion[0] == pytest.approx(insertion[-1], abs=1e-6)
            assert deletion[-1] == pytest.approx(insertion[0], abs=1e-6)
            area = (deletion[0] / 2 + deletion[1] + deletion[2] + deletion[3] / 2) / 3
            assert values[f"deletion{score}_auc"] == pytest.approx(area, abs=1e-5)
    with pytest.raises(InputError, match="--deletion_steps must be >= 0"):
        explain.main(["--checkpoint", str(checkpoint), "--config", str(CONFIG), "--deletion_steps", "-1"])
