"""The rules that decide whether a paper's claim holds in the claims benches (bench/claims_rules.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pytest

from claims_common import mean_ci  # noqa: E402
from claims_rules import combine, direction, no_change, pm, share, with_seeds  # noqa: E402


def test_direction_needs_the_interval_on_the_papers_side() -> None:
    assert direction([0.10, 0.12, 0.11]) == "yes"  # the whole 95% interval above 0
    assert direction([0.30, -0.10, 0.05]) == "partly"  # mean above 0, interval across 0
    assert direction([-0.10, -0.12, -0.11]) == "no"
    assert direction([-0.10, -0.12, -0.11], sign=-1) == "yes"  # the paper says "lower"
    assert direction([0.0, 0.0, 0.0]) == "no"


def test_no_change_share_and_combine() -> None:
    assert no_change([0.001, -0.002, 0.0], tolerance=0.01) == "yes"
    assert no_change([0.009, -0.02, 0.02], tolerance=0.01) == "partly"
    assert no_change([0.05, 0.06, 0.04], tolerance=0.01) == "no"
    assert share([True, True]) == "yes" and share([True, False]) == "partly" and share([False]) == "no"
    assert combine(["yes", "yes"]) == "yes" and combine(["yes", "no"]) == "partly"
    assert combine(["no", "no"]) == "no" and combine(["partly", "no"]) == "partly"


def test_formatting_says_the_seed_count_once() -> None:
    assert pm([0.5, 0.5, 0.5], 100.0, 1) == "50.0 ± 0.0"
    rows = with_seeds([{"ours": "a 1.0 ± 0.1, b 2.0 ± 0.2"}], 3)
    assert rows[0]["ours"] == "a 1.0 ± 0.1, b 2.0 ± 0.2 (n=3)"


def test_mean_ci_is_the_t_interval_of_a_t_table() -> None:
    # 1, 2, 3: mean 2, sample sd 1; t(0.975, 2 d.f.) = 4.303 from a printed t-table
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.303 / 3 ** 0.5, abs=1e-3)
    assert mean_ci([5.0]) == (5.0, 0.0)  # one seed: no interval
