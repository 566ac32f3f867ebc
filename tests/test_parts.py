"""Part-level evidence scores (cama.metrics.parts) and the synthetic data's ``evidence`` vectors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cama.metrics import PartEvidence, branch_parts, part_energy_share, parts_covered
from datamodules.reid import ReIDDataModule
from datamodules.synthetic import PART_NAMES, SyntheticReID, differing_parts, discriminative_parts

SMALL = dict(num_train_ids=10, num_test_ids=10, num_cameras=4, cameras_per_id=(2, 3), images_per_camera=(1, 2),
             query_cameras=2, num_distractors=3, num_junk=2, family_size=5)


# -- a hand-made example ------------------------------------------------------------------------
#   part 0: the top two rows (8 px); part 1: the 2x2 block at the bottom left (4 px);
#   part 2 overlaps part 0 on its first two pixels; the person is 12 px, (3, 3) is background.
def _hand_parts() -> torch.Tensor:
    parts = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    parts[0, 0, :2] = True
    parts[0, 1, 2:, :2] = True
    parts[0, 2, 0, :2] = True
    return parts


HAND_MAP = torch.tensor([[[1.0, 1.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 0.0],
                          [2.0, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 4.0]]])  # total energy 8


@pytest.mark.parametrize("selected, energy, area", [
    ([True, False, False], 2 / 8, 8 / 12),
    ([False, True, False], 2 / 8, 4 / 12),
    ([True, True, False], 4 / 8, 12 / 12),
    ([True, False, True], 2 / 8, 8 / 12),  # overlapping parts: each pixel once
    ([False, False, True], 2 / 8, 2 / 12),
])
def test_energy_share_by_hand(selected, energy, area):
    e, a = part_energy_share(HAND_MAP, _hand_parts(), torch.tensor([selected]))
    assert e.item() == pytest.approx(energy) and a.item() == pytest.approx(area)


def test_energy_share_is_nan_without_a_visible_selected_part_or_energy():
    parts = _hand_parts()
    e, a = part_energy_share(HAND_MAP, parts, torch.zeros(1, 3, dtype=torch.bool))
    assert e.isnan().all() and a.isnan().all()
    parts[0, 1] = False  # selected but not visible (absent or occluded)
    assert part_energy_share(HAND_MAP, parts, torch.tensor([[False, True, False]]))[0].isnan().all()
    assert part_energy_share(torch.zeros(1, 4, 4), _hand_parts(), torch.ones(1, 3, dtype=torch.bool))[0].isnan().all()


def test_parts_covered_and_branch_parts_by_hand():
    parts = _hand_parts()[:, :2]
    a = torch.zeros(4, 4)
    a[0, 0], a[0, 1] = 3.0, 2.0  # top 2: part 0 (2 of its 8 px)
    b = torch.zeros(4, 4)
    b[3, 3], b[2, 0] = 3.0, 2.0  # top 2: background and part 1 (1 of its 4 px)
    c = torch.zeros(4, 4)
    c[3, 3], c[3, 2] = 3.0, 2.0  # top 2: background only
    maps = torch.stack([a, b, c])[None]  # [1, 3, 4, 4]
    assert parts_covered(maps[:, :1], parts, topk=2).tolist() == [1]
    assert parts_covered(maps, parts, topk=2).tolist() == [2]
    assert parts_covered(maps, parts, topk=2, min_share=0.25).tolist() == [2]  # 2 >= 0.25 * 8, 1 >= 0.25 * 4
    assert parts_covered(maps, parts, topk=2, min_share=0.3).tolist() == [0]
    assert parts_covered(maps[:, 2:], parts, topk=2).tolist() == [0]
    assert branch_parts(maps, parts, topk=2).tolist() == [[0, 1, -1]]


# -- the definitions written out naively --------------------------------------------------------
def _naive_energy_share(maps, parts, selected):
    out_e, out_a = [], []
    for b in range(maps.shape[0]):
        energy = total = 0.0
        area = person = 0
        for y, x in itertools.product(range(maps.shape[1]), range(maps.shape[2])):
            value = float(maps[b, y, x])
            total += value
            in_person = any(bool(parts[b, p, y, x]) for p in range(parts.shape[1]))
            in_selected = any(bool(parts[b, p, y, x]) and bool(selected[b, p]) for p in range(parts.shape[1]))
            person += in_person
            area += in_selected
            energy += value if in_selected else 0.0
        ok = area > 0 and total > 0
        out_e.append(energy / total if ok else math.nan)
        out_a.append(area / person if ok else math.nan)
    return torch.tensor(out_e), torch.tensor(out_a)


def _naive_covered(maps, parts, k, min_share):
    out = []
    for b in range(maps.shape[0]):
        union = set()
        for n in range(maps.shape[1]):
            flat = maps[b, n].flatten()
            union |= set(flat.topk(k).indices.tolist())
        count = 0
        for p in range(parts.shape[1]):
            pixels = set(parts[b, p].flatten().nonzero().flatten().tolist())
            count += bool(pixels) and len(pixels & union) >= min_share * len(pixels)
        out.append(count)
    return out


def _random_inputs(seed, batch=6, branches=3, num_parts=4, size=(6, 5)):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(batch, branches, *size, generator=g)  # distinct values: no ties in top-k
    label = torch.randint(-1, num_parts, (batch, *size), generator=g)
    parts = label[:, None] == torch.arange(num_parts)[None, :, None, None]
    parts |= torch.rand(batch, num_parts, *size, generator=g) < 0.1  # some overlap
    parts[1, 2] = False  # an absent part
    selected = torch.rand(batch, num_parts, generator=g) < 0.5
    selected[2] = False  # a row with nothing selected
    return maps, parts, selected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_scores_match_the_naive_definitions(seed):
    maps, parts, selected = _random_inputs(seed)
    single = maps[:, 0].clone()
    single[0] = 0.0  # a row without energy
    energy, area = part_energy_share(single, parts, selected)
    naive_energy, naive_area = _naive_energy_share(single, parts, selected)
    assert energy.isnan().sum() >= 2 and (~energy.isnan()).sum() >= 2
    torch.testing.assert_close(energy, naive_energy, equal_nan=True)
    torch.testing.assert_close(area, naive_area, equal_nan=True)
    k = round(0.2 * 30)
    for share in (0.1, 0.3):
        assert parts_covered(maps, parts, topk=0.2, min_share=share).tolist() == _naive_covered(maps, parts, k, share)


def test_metric_sums_are_the_means_of_two_updates_and_merge_by_sum():
    first, second = _random_inputs(3), _random_inputs(4, batch=5)
    metric = PartEvidence(topk=0.2)
    for maps, parts, selected in (first, second):
        metric.update(maps.sum(1), parts, selected, branch_maps=maps)
    energy, area, covered, person, on_person = [], [], [], [], []
    for maps, parts, selected in (first, second):
        e, a = part_energy_share(maps.sum(1), parts, selected, within_person=True)
        energy.append(e)
        area.append(a)
        everything = torch.ones_like(selected, dtype=torch.bool)
        on_person.append(part_energy_share(maps.sum(1), parts, everything)[0])
        covered.append(parts_covered(maps, parts, 0.2).float())
        person.append(parts.flatten(1).any(1))
    energy, area, covered, person, on_person = (torch.cat(x) for x in (energy, area, covered, person, on_person))
    valid = ~energy.isnan()
    out = metric.compute()
    assert out["evidence_energy"].item() == pytest.approx(energy[valid].mean().item(), rel=1e-6)
    assert out["evidence_area"].item() == pytest.approx(area[valid].mean().item(), rel=1e-6)
    assert out["evidence_ratio"].item() == pytest.approx((energy[valid].sum() / area[valid].sum()).item(), rel=1e-6)
    assert out["parts_covered"].item() == pytest.approx(covered[person].mean().item(), rel=1e-6)
    assert out["person_energy"].item() == pytest.approx(on_person[~on_person.isnan()].mean().item(), rel=1e-6)
    # two processes' states summed (what dist_reduce_fx="sum" does) give the same numbers
    one, other = PartEvidence(topk=0.2), PartEvidence(topk=0.2)
    one.update(first[0].sum(1), first[1], first[2], branch_maps=first[0])
    other.update(second[0].sum(1), second[1], second[2], branch_maps=second[0])
    one.merge_state(other)
    for key, value in one.compute().items():
        assert value.item() == pytest.approx(out[key].item(), rel=1e-6)
    # without branch maps, the map's own top region is the one region
    single = PartEvidence(topk=0.2)
    single.update(first[0][:, 0], first[1], first[2])
    assert single.compute()["parts_covered"].item() == pytest.approx(
        parts_covered(first[0][:, :1], first[1], 0.2).float()[first[1].flatten(1).any(1)].mean().item())


def test_metric_rejects_bad_shapes():
    with pytest.raises(ValueError):
        PartEvidence(min_share=0.0)
    maps, parts, selected = _random_inputs(0)
    with pytest.raises(ValueError):
        PartEvidence().update(maps[:, 0, :-1], parts, selected)
    with pytest.raises(ValueError):
        part_energy_share(maps[:, 0], parts, selected[:, :-1])


# -- the data's evidence vectors ----------------------------------------------------------------
@pytest.fixture(scope="module")
def gen() -> SyntheticReID:
    return SyntheticReID(seed=3, **SMALL)


def test_discriminative_parts_follow_the_sibling_definition(gen):
    idents = gen.identities
    for sole, table in ((False, gen.evidence), (True, gen.evidence_required)):
        expected = torch.zeros(len(idents), len(PART_NAMES), dtype=torch.bool)
        for i, a in enumerate(idents):
            for b in idents:
                diff = differing_parts(a, b)
                if b is a or b.family != a.family or (sole and len(diff) != 1):
                    continue
                for name in diff:
                    expected[i, PART_NAMES.index(name)] = True
        assert torch.equal(table, expected)
        assert torch.equal(discriminative_parts(idents[::-1], sole=sole), expected.flip(0))  # order-free
    lone = discriminative_parts(idents[:1])  # no sibling: nothing set
    assert not lone.any() and discriminative_parts([]).shape == (0, len(PART_NAMES))


def test_siblings_items_mark_the_part_they_differ_in(gen):
    query, gallery = gen.dataset("query"), gen.dataset("gallery")
    first = {}
    for i, info in enumerate(query.infos):
        first.setdefault(info.identity, i)
    pairs = [(a, b) for a, b in itertools.combinations(sorted(first), 2)
             if gen.identities[a].family == gen.identities[b].family
             and len(differing_parts(gen.identities[a], gen.identities[b])) == 1]
    assert pairs  # the test identities hold siblings that differ in one part
    for a, b in pairs:
        part = PART_NAMES.index(differing_parts(gen.identities[a], gen.identities[b])[0])
        for item in (query[first[a]], query[first[b]]):
            assert item["evidence"].dtype == torch.bool and item["evidence"].shape == (len(PART_NAMES),)
            assert item["evidence"][part] and item["evidence_required"][part]
    distractor = next(i for i, info in enumerate(gallery.infos) if info.kind == "distractor")
    assert not gallery[distractor]["evidence"].any()


def test_eval_batches_carry_the_evidence_and_training_batches_do_not():
    dm = ReIDDataModule(validate_on_test=True, dataset="synthetic", image_size=(32, 16), eval_batch_size=8, num_workers=0, p=2, k=2,
                        synthetic=dict(num_train_ids=6, num_test_ids=5, cameras_per_id=(2, 3),
                                       images_per_camera=(1, 2), num_distractors=2, num_junk=1, seed=4))
    batch = next(iter(dm.val_dataloader()))
    assert batch["evidence"].shape == (8, len(PART_NAMES)) and batch["evidence"].dtype == torch.bool
    nq = dm.num_query
    for j, index in enumerate(batch["index"].tolist()):
        split, i = ("query", index) if index < nq else ("gallery", index - nq)
        assert torch.equal(batch["evidence_required"][j], dm.generator.dataset(split).evidence_required[i])
    assert "evidence" not in next(iter(dm.train_dataloader()))
