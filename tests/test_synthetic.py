"""The embedded synthetic re-ID generator: determinism, splits, ground truth, on-disk layouts."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter

import pytest
import torch

from datamodules.synthetic import (
    PART_NAMES,
    SPLITS,
    SyntheticReID,
    differing_parts,
    write_reid_layout,
)

SMALL = dict(num_train_ids=12, num_test_ids=8, num_cameras=6, cameras_per_id=(2, 4), images_per_camera=(1, 3),
             query_cameras=2, num_distractors=6, num_junk=4)


@pytest.fixture(scope="module")
def gen() -> SyntheticReID:
    return SyntheticReID(seed=5, **SMALL)


@pytest.fixture(scope="module")
def default_gen() -> SyntheticReID:
    return SyntheticReID(seed=0)


def _person_pixels(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.nonzero(masks.any(0), as_tuple=True)
    return ys, xs


# -- determinism --------------------------------------------------------------------------------


def test_same_seed_split_index_gives_identical_sample(gen):
    other = SyntheticReID(seed=5, **SMALL)
    for split in SPLITS:
        n = len(gen.samples(split))
        for i in (0, n // 2, n - 1):
            a, b = gen.render(split, i), other.render(split, i)
            assert torch.equal(a.image, b.image)
            assert torch.equal(a.masks, b.masks)
            assert torch.equal(a.box, b.box)
            assert (a.pid, a.camid) == (b.pid, b.camid)


def test_cached_dataset_renders_each_image_once_and_gives_the_same_items(gen):
    cached, fresh = gen.dataset("train", cache=True), gen.dataset("train")
    first, again = cached[(4, 1)], cached[(4, 2)]
    assert first["image"].data_ptr() == again["image"].data_ptr()  # kept, not drawn again
    assert fresh[4]["image"].data_ptr() != fresh[4]["image"].data_ptr()
    for key in ("image", "mask", "box"):
        assert torch.equal(first[key], fresh[4][key])
    assert (first["pid"], first["camid"]) == (fresh[4]["pid"], fresh[4]["camid"])


def test_rendering_does_not_depend_on_order_or_global_rng(gen):
    ref = gen.render("train", 3).image
    torch.manual_seed(123)
    for i in (7, 1, 0):
        gen.render("gallery", i)
    torch.rand(10)
    assert torch.equal(gen.render("train", 3).image, ref)


def test_different_seeds_and_indices_differ(gen):
    other = SyntheticReID(seed=6, **SMALL)
    assert not torch.equal(gen.render("train", 0).image, other.render("train", 0).image)
    # two images of the same identity and camera are still different images (pose, noise, clutter)
    infos = gen.samples("train")
    pairs = [(i, j) for i, j in itertools.combinations(range(len(infos)), 2)
             if (infos[i].pid, infos[i].camid) == (infos[j].pid, infos[j].camid)]
    assert pairs
    i, j = pairs[0]
    assert not torch.equal(gen.render("train", i).image, gen.render("train", j).image)


def test_image_format(gen):
    s = gen.render("query", 0)
    assert s.image.dtype == torch.uint8 and s.image.shape == (3, 128, 64)
    assert s.masks.dtype == torch.bool and s.masks.shape == (len(PART_NAMES), 128, 64)
    assert s.box.shape == (4,)
    assert s.image.float().std() > 10  # not a flat image


# -- identities and splits ----------------------------------------------------------------------


def test_train_and_test_identities_are_disjoint(default_gen):
    g = default_gen
    train_pids = {s.pid for s in g.samples("train")}
    test_pids = {s.pid for s in g.samples("query") + g.samples("gallery") if s.pid > 0}
    assert len(train_pids) == g.config.num_train_ids
    assert len(test_pids) == g.config.num_test_ids
    assert not train_pids & test_pids
    assert 0 not in train_pids and -1 not in train_pids
    # disjoint in appearance too: no two identities share all attributes
    keys = [ident.parts() for ident in g.identities]
    assert len(set(keys)) == len(keys)


def test_many_identities_differ_in_exactly_one_part(default_gen):
    idents = default_gen.identities
    one_part = 0
    for a, b in itertools.combinations(idents, 2):
        n_diff = sum(pa != pb for pa, pb in zip(a.parts(), b.parts()))
        assert len(differing_parts(a, b)) == n_diff
        assert n_diff >= 1
        one_part += n_diff == 1
    # most identities have a look-alike that differs in a single part
    with_twin = sum(
        any(sum(pa != pb for pa, pb in zip(a.parts(), b.parts())) == 1 for b in idents if b is not a)
        for a in idents
    )
    assert one_part >= len(idents) // 2
    assert with_twin >= 0.8 * len(idents)
    # and the single differing part is not always the same one
    parts = Counter(differing_parts(a, b)[0] for a, b in itertools.combinations(idents, 2)
                    if len(differing_parts(a, b)) == 1)
    assert len(parts) == len(PART_NAMES)


def test_split_sizes_follow_the_config(gen):
    cfg = gen.config
    train = gen.samples("train")
    per_id = Counter(s.pid for s in train)
    assert len(per_id) == cfg.num_train_ids
    lo = cfg.cameras_per_id[0] * cfg.images_per_camera[0]
    hi = cfg.cameras_per_id[1] * cfg.images_per_camera[1]
    assert all(lo <= n <= hi for n in per_id.values())
    for pid in per_id:
        cams = Counter(s.camid for s in train if s.pid == pid)
        assert cfg.cameras_per_id[0] <= len(cams) <= cfg.cameras_per_id[1]
        assert all(cfg.images_per_camera[0] <= n <= cfg.images_per_camera[1] for n in cams.values())
    gallery = gen.samples("gallery")
    assert sum(s.pid == 0 for s in gallery) == cfg.num_distractors
    assert sum(s.pid == -1 for s in gallery) == cfg.num_junk
    assert all(s.pid > 0 for s in gen.samples("query"))
    assert all(0 <= s.camid < cfg.num_cameras for split in SPLITS for s in gen.samples(split))


def test_default_sizes_suit_the_fast_job(default_gen):
    g = default_gen
    per_id = Counter(s.pid for s in g.samples("train"))
    assert len(per_id) == 150
    mean = sum(per_id.values()) / len(per_id)
    assert 10 <= mean <= 16
    assert len({s.pid for s in g.samples("query")}) == 100
    assert sum(s.pid == 0 for s in g.samples("gallery")) == 200
    assert sum(s.pid == -1 for s in g.samples("gallery")) == 100


def test_every_query_has_gallery_matches_in_other_cameras(default_gen):
    g = default_gen
    gallery = [(s.pid, s.camid) for s in g.samples("gallery")]
    query = g.samples("query")
    per_id = Counter(s.pid for s in query)
    assert set(per_id.values()) == {g.config.query_cameras}
    for q in query:
        assert any(pid == q.pid and cam != q.camid for pid, cam in gallery), q
    # one query per (identity, camera)
    assert len({(q.pid, q.camid) for q in query}) == len(query)


def test_cameras_differ(default_gen):
    cams = default_gen.cameras
    assert len({c.gain for c in cams}) == len(cams)
    assert len({(c.bg_a, c.bg_b) for c in cams}) == len(cams)
    # the same identity looks different in different cameras: mean background colour differs
    g = default_gen
    means = {}
    for i, s in enumerate(g.samples("train")):
        if s.camid not in means:
            r = g.render("train", i)
            means[s.camid] = r.image.float()[:, ~r.masks.any(0)].mean(1)
    vals = list(means.values())
    assert all((a - b).abs().max() > 3 for a, b in itertools.combinations(vals, 2))


# -- ground truth ---------------------------------------------------------------------------------


def test_boxes_contain_the_person_masks(gen):
    for split in SPLITS:
        for i, info in enumerate(gen.samples(split)):
            s = gen.render(split, i)
            # parts do not overlap
            assert int(s.masks.sum(0).max()) <= 1
            ys, xs = _person_pixels(s.masks)
            if info.kind == "person":
                assert len(ys) > 300, (split, i)
                for p in ("head", "upper", "lower"):
                    assert s.masks[PART_NAMES.index(p)].any(), (split, i, p)
            if len(ys) == 0:
                continue
            x1, y1, x2, y2 = s.box.tolist()
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 128
            assert xs.min() >= x1 and xs.max() + 1 <= x2 and ys.min() >= y1 and ys.max() + 1 <= y2, (split, i)


def test_unoccluded_box_is_tight(gen):
    tight = 0
    for i, info in enumerate(gen.samples("train")):
        s = gen.render("train", i)
        ys, xs = _person_pixels(s.masks)
        box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        tight += torch.equal(box, s.box)
    # every person not covered by an occluder or a cut has a tight box
    assert tight >= 0.6 * len(gen.samples("train"))


def test_junk_is_cut_and_distractors_have_little_person(default_gen):
    g = default_gen
    gal = g.samples("gallery")
    person_area, junk_cut, distr_area = [], 0, []
    for i, s in enumerate(gal):
        if s.kind == "person" and len(person_area) < 40:
            person_area.append(int(g.render("gallery", i).masks.any(0).sum()))
        elif s.kind == "distractor" and len(distr_area) < 40:
            distr_area.append(int(g.render("gallery", i).masks.any(0).sum()))
        elif s.kind == "junk" and junk_cut < 1000:
            r = g.render("gallery", i)
            x1, y1, x2, y2 = r.box.tolist()
            # the person touches the image border (cut) or is zoomed far beyond a normal crop
            junk_cut += x1 <= 0 or y1 <= 0 or x2 >= 64 or y2 >= 128
    n_junk = sum(s.kind == "junk" for s in gal)
    assert junk_cut == n_junk
    assert max(distr_area) < min(person_area)


def test_generation_speed(default_gen):
    g = default_gen
    n = 200
    for i in range(10):
        g.render("train", i)
    t0 = time.perf_counter()
    for i in range(n):
        g.render("train", i)
    per_image = (time.perf_counter() - t0) / n
    # ~1.5 ms on an idle core; generous bound for a loaded CI machine
    assert per_image < 0.02, f"{per_image * 1e3:.2f} ms per image"


# -- on-disk layouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["market1501", "dukemtmc"])
def test_write_market_and_duke_layouts(tmp_path, gen, layout):
    root = write_reid_layout(tmp_path / layout, layout, gen, progress=False)
    names = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    pattern = (re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$") if layout == "market1501"
               else re.compile(r"^(-1|\d{4})_c(\d)_f(\d{7})\.jpg$"))
    for split, folder in names.items():
        files = sorted(p.name for p in (root / folder).iterdir())
        assert len(files) == len(gen.samples(split))
        parsed = []
        for f in files:
            m = pattern.match(f)
            assert m, f
            parsed.append((int(m.group(1)), int(m.group(2)) - 1))
        assert Counter(parsed) == Counter((s.pid, s.camid) for s in gen.samples(split))
    assert any(f.startswith("-1_c") for f in (p.name for p in (root / "bounding_box_test").iterdir()))
    assert any(f.startswith("0000_c") for f in (p.name for p in (root / "bounding_box_test").iterdir()))
    ann = json.loads((root / "synthetic_annotations.json").read_text())
    assert len(ann["images"]) == sum(len(gen.samples(s)) for s in SPLITS)
    rel, entry = next(iter(ann["images"].items()))
    assert (root / rel).is_file()
    assert entry["box"] == [round(float(v), 2) for v in gen.render(entry["split"], entry["index"]).box]


def test_write_cuhk03_layout(tmp_path):
    root = write_reid_layout(tmp_path / "cuhk03-np", "cuhk03", seed=1, progress=False, num_train_ids=4,
                             num_test_ids=3)
    g = SyntheticReID(seed=1, num_train_ids=4, num_test_ids=3, num_cameras=2, cameras_per_id=(2, 2),
                      query_cameras=2, num_distractors=0, num_junk=0)
    pattern = re.compile(r"^(\d{4})_c(\d)_(\d+)\.png$")
    for variant in ("labeled", "detected"):
        for split, folder in (("train", "bounding_box_train"), ("query", "query"),
                              ("gallery", "bounding_box_test")):
            files = sorted((root / variant / folder).iterdir())
            parsed = [pattern.match(p.name) for p in files]
            assert all(parsed), files
            assert Counter((int(m.group(1)), int(m.group(2)) - 1) for m in parsed) == Counter(
                (s.pid, s.camid) for s in g.samples(split))
    # detected crops are not the labeled ones
    a = sorted((root / "labeled" / "query").iterdir())[0].read_bytes()
    b = sorted((root / "detected" / "query").iterdir())[0].read_bytes()
    assert a != b


def test_config_validation():
    with pytest.raises(ValueError, match="cameras_per_id"):
        SyntheticReID(cameras_per_id=(1, 2))
    with pytest.raises(ValueError, match="query_cameras"):
        SyntheticReID(cameras_per_id=(2, 3), query_cameras=3)
    with pytest.raises(TypeError, match="unknown"):
        SyntheticReID(num_people=3)


def test_loose_placement_moves_and_scales_the_person_and_leaves_the_rest_alone():
    tight = SyntheticReID(seed=5, **SMALL)
    loose = SyntheticReID(seed=5, placement="loose", **SMALL)
    people = [i for i, info in enumerate(tight.samples("train")) if info.kind == "person"]
    assert [s.pid for s in tight.samples("train")] == [s.pid for s in loose.samples("train")]

    def spread(generator):
        boxes = torch.stack([generator.render("train", i).box for i in people])
        centres, heights = (boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3] - boxes[:, 1]
        return centres.std(), heights.mean(), heights.min()

    tight_x, tight_h, _ = spread(tight)
    loose_x, loose_h, loose_min = spread(loose)
    assert loose_x > 1.5 * tight_x  # the person stands anywhere, not near the centre
    assert loose_h < 0.85 * tight_h and loose_min < 0.6 * 128  # and smaller
    # the person's clothes are the identity's: the same part colours in both placements
    i = people[0]
    a, b = tight.render("train", i), loose.render("train", i)
    upper = PART_NAMES.index("upper")
    colour = lambda s: s.image[:, s.masks[upper]].float().mean(1)  # noqa: E731
    assert torch.allclose(colour(a), colour(b), atol=20)
    with pytest.raises(ValueError, match="placement"):
        SyntheticReID(seed=0, placement="random")
