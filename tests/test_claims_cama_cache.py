"""The re-ID claims bench's per-(variant, seed) cache (bench/claims_cama_cache.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from claims_cama_cache import RunCache, run_settings, variant_dir  # noqa: E402

SETTINGS = {"config": "x.yaml", "config_digest": "abc", "data_overrides": {}, "epochs": 2}


def entry(seed: int, value: float) -> dict:
    per_query = {"query": [0, 1], "ap": [value, value], "rank1": [1.0, 0.0]}
    return {"measures": {"mAP": value, "rank1": value / 2}, "per_query": per_query, "sanity": None,
            "seconds": 10.0 + seed}


def test_runs_are_reused_by_settings_and_collected_over_the_seeds_every_variant_has(tmp_path: Path) -> None:
    cache = RunCache(tmp_path, SETTINGS)
    for seed in (0, 1, 2):
        cache.save("CAMA-2", seed, entry(seed, 0.5 + seed))
    for seed in (0, 2, 3):
        cache.save("MltB-2 + L_id", seed, entry(seed, 0.1 * seed))
    assert (tmp_path / "MltB-2_L_id" / "seed3.json").exists()
    assert not list(tmp_path.rglob("*.part"))
    assert cache.load("CAMA-2", 1)["measures"]["mAP"] == 1.5
    assert cache.load("CAMA-2", 3) is None
    variants = ["CAMA-2", "MltB-2 + L_id"]
    assert cache.cached_seeds(variants) == [0, 2]  # seeds 1 and 3 lack one variant
    found = cache.collect(variants, [0, 2])
    assert found["per_seed"]["CAMA-2"]["mAP"] == [0.5, 2.5]
    assert found["per_seed"]["MltB-2 + L_id"]["rank1"] == [0.0, 0.1]
    assert [q["ap"] for q in found["per_query"]["CAMA-2"]] == [[0.5, 0.5], [2.5, 2.5]]
    assert found["seconds"] == pytest.approx(10 + 10 + 12 + 12)
    assert found["sanity"] == {}
    # another setting (e.g. a shorter run) does not see these runs
    other = RunCache(tmp_path, {**SETTINGS, "epochs": 1})
    assert other.load("CAMA-2", 0) is None and other.cached_seeds(variants) == []
    assert other.notes
    with pytest.raises(FileNotFoundError):
        cache.collect(variants, [1])


def test_an_entry_records_its_run(tmp_path: Path) -> None:
    path = RunCache(tmp_path, SETTINGS).save("IDE+BN", 4, entry(4, 0.3))
    saved = json.loads(path.read_text())
    assert path == tmp_path / "IDE_BN" / "seed4.json"
    recorded = (saved["variant"], saved["seed"], saved["settings"], saved["seconds"])
    assert recorded == ("IDE+BN", 4, SETTINGS, 14.0)


def test_settings_follow_the_config_and_the_overrides(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  max_epochs: 16\nmodel:\n  class_path: a.B\ndata:\n  class_path: c.D\n")
    base = run_settings(config, {"synthetic": {"num_test_ids": 250}}, None)
    assert base["epochs"] == 16 and run_settings(config, {}, 1)["epochs"] == 1
    assert run_settings(config, {}, None) != base
    config.write_text("# a comment\n" + config.read_text())
    assert run_settings(config, {"synthetic": {"num_test_ids": 250}}, None) == base  # comments do not count
    config.write_text(config.read_text().replace("a.B", "a.C"))
    assert run_settings(config, {"synthetic": {"num_test_ids": 250}}, None) != base
    assert variant_dir("MltB-3 + L_id") == "MltB-3_L_id"


def test_the_rows_bootstrap_pairs_the_same_queries() -> None:
    from claims_cama_rows import bootstrap
    from paired_bootstrap import paired_bootstrap

    a = [{"query": [0, 1, 2], "ap": [0.5, 0.75, 1.0]}, {"query": [0, 1, 2], "ap": [0.25, 0.5, 1.0]}]
    b = [{"query": [0, 1, 2], "ap": [0.25, 0.75, 0.5]}, {"query": [0, 1, 2], "ap": [0.25, 0.25, 0.5]}]
    text = bootstrap({"A": a, "B": b}, "A", "B", "ap")
    want = paired_bootstrap([x["ap"] for x in a], [y["ap"] for y in b]).scaled(100)
    assert text.startswith("; paired bootstrap over 6 test queries (3 x 2 seeds, 2000 resamples): ")
    assert text.endswith(f"{want.mean:.1f} [{want.low:.1f}, {want.high:.1f}]")
    assert f"{want.mean:.1f}" == "25.0"  # each seed: (0.25 + 0 + 0.5) / 3 and (0 + 0.25 + 0.5) / 3
    assert bootstrap(None, "A", "B", "ap") == ""
    with pytest.raises(ValueError):
        bootstrap({"A": a, "B": [{**b[0], "query": [0, 1, 3]}, b[1]]}, "A", "B", "ap")
