"""``cama.map_scoring``: probes shared over processes, captured features completed, masked forwards
batched, probes scored -- each against a computation written out here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cama.map_scoring import (
    CurveOptions,
    ProbeScorer,
    captured_flags,
    complete_features,
    masked_embeddings,
    owned_positions,
    probe_owners,
)
from cama.metrics import evaluate_rank
from cama.metrics.distances import pairwise_distance
from cama.metrics.faithfulness import mask_images
from cama.metrics.ranking import EmbeddingSet
from cama.models import CAMA
from cama.references import ReIDReferences
from cama.viz import ModelExplainer, ProbeAgainst
from datamodules import ReIDDataModule


# ------------------------------------------------------------------------------------------ sharing
def owners_written_out(flags: list[list[int]]) -> list[int]:
    world, count = len(flags), len(flags[0])
    owners = []
    for p in range(count):
        holders = [r for r in range(world) if flags[r][p]]
        owners.append(holders[0] if holders else p % world)
    return owners


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_probe_has_one_owner_the_first_that_captured_it(world):
    generator = torch.Generator().manual_seed(world)
    for _ in range(20):
        flags = (torch.rand(world, 11, generator=generator) < 0.3).int()
        assert probe_owners(flags).tolist() == owners_written_out(flags.tolist())
        shares = [owned_positions(flags, rank) for rank in range(world)]
        assert sorted(p for share in shares for p in share) == list(range(11))  # each exactly once


def test_captured_flags_mark_the_captured_probes():
    assert captured_flags([5, 2, 9], {2: {}, 7: {}}).tolist() == [0, 1, 0]
    assert captured_flags([5, 2, 9], {2: {}}).dtype == torch.int32


def test_owners_need_every_process_row():
    with pytest.raises(ValueError, match=r"\[W, N\]"):
        probe_owners(torch.zeros(4, dtype=torch.int32))


# -------------------------------------------------------------------------------------- the probes
@pytest.fixture(scope="module")
def setting():
    dm = ReIDDataModule(
        dataset="synthetic", image_size=(64, 32), p=4, k=2, eval_batch_size=64, num_workers=0,
        synthetic=dict(num_train_ids=10, num_test_ids=6, num_distractors=4, num_junk=2),
    )
    dm.setup("fit")
    torch.manual_seed(0)
    model = CAMA(num_classes=dm.num_classes, backbone="resnet10", width=8, num_branches=2).eval()
    dataset = dm.eval_dataset
    provider = ReIDReferences.from_dataset(dataset)
    explainer = ModelExplainer(model)
    gallery_index = list(range(int(dataset.num_query), len(dataset)))
    items = [dataset[i] for i in gallery_index]
    with torch.no_grad():
        embeddings = explainer.features(torch.stack([it["image"] for it in items])).embedding
    gallery = EmbeddingSet(
        embeddings, provider.labels[gallery_index], torch.tensor(gallery_index), provider.camids[gallery_index]
    )
    probes = provider.probe_candidates()[:6].tolist()
    return dm, dataset, provider, explainer, gallery, probes


def load(dataset, indices):
    from torch.utils.data import default_collate

    return default_collate([dataset[i] for i in indices])


def captured_items(explainer, dataset, indices):
    """Items as a ProbeCapture keeps them: the sample's tensors and its maps."""
    batch = load(dataset, indices)
    maps = explainer.features(batch["image"]).maps
    return {
        i: {**{k: v[r] for k, v in batch.items() if torch.is_tensor(v)}, "maps": [m[r] for m in maps]}
        for r, i in enumerate(indices)
    }


def test_complete_features_reuse_the_captured_and_forward_the_others(setting):
    _, dataset, _, explainer, _, probes = setting
    captured = captured_items(explainer, dataset, [probes[3], probes[1]])
    asked: list[list[int]] = []

    def loader(indices):
        asked.append(list(indices))
        return load(dataset, indices)

    features, batch, order = complete_features(explainer, probes, captured, loader, "cpu")
    assert order == [probes[1], probes[3]] + [p for p in probes if p not in (probes[1], probes[3])]
    assert asked == [order[2:]]  # only the ones not captured are loaded
    expected = explainer.features(load(dataset, order)["image"])
    assert torch.allclose(features.embedding, expected.embedding, atol=1e-5)
    for got, want in zip(features.maps, expected.maps):
        assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(batch["index"], torch.tensor(order))


def test_masked_embeddings_are_one_forward_of_each_probe_masked_alone(setting):
    _, dataset, _, explainer, _, probes = setting
    images = load(dataset, probes)["image"]
    generator = torch.Generator().manual_seed(0)
    maps = [torch.rand(4, 16, 8, generator=generator), torch.rand(2, 64, 32, generator=generator)]
    blocks = [images[:4], images[4:6]]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    calls: list[int] = []

    def embed(x):
        calls.append(len(x))
        return explainer.features(x).embedding

    out = masked_embeddings(embed, blocks, maps, mean, std)
    assert calls == [6] and [len(o) for o in out] == [4, 2]
    for block, block_maps, got in zip(blocks, maps, out):
        for r in range(len(block)):  # one probe at a time, the map upsampled and applied by hand
            weights = F.interpolate(block_maps[r][None, None], size=(64, 32), mode="bilinear", align_corners=False)[0]
            picture = block[r] * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
            masked = (picture * weights.clamp(0, 1) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
            alone = explainer.features(masked[None]).embedding[0]
            assert torch.allclose(got[r], alone, atol=1e-4)
    assert masked_embeddings(embed, [], []) == [] and calls == [6]


def scorer_results(setting, shares, captured=None, curves=None):
    _, dataset, provider, explainer, gallery, probes = setting
    scorer = ProbeScorer(["ram", "fam"], num_faithfulness_samples=4, num_gradient_samples=2, curves=curves)
    first = dataset[probes[0]]
    scores = None
    for positions in shares:  # each process's share, into one set of states (what the reduction sums)
        scores = scorer.score(
            explainer, provider, gallery, probes, positions, first, captured or {},
            lambda indices: load(dataset, indices), 0.2, 4, lambda x: explainer.features(x).embedding, "cpu",
        )
    results = scores.compute_named("loc")
    scores.reset()
    return results


@pytest.mark.parametrize("curves", [None, CurveOptions(samples=5, steps=3, baseline="noisy_linear")])
def test_the_shares_of_two_processes_score_what_one_process_scores(setting, curves):
    """With the deletion / insertion curves too: a probe's random map and noise are its own."""
    _, dataset, _, explainer, _, probes = setting
    single = scorer_results(setting, [list(range(len(probes)))], curves=curves)
    flags = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 1, 0, 1, 0, 0]])
    shares = [owned_positions(flags, rank) for rank in range(2)]
    assert shares == [[0, 2, 3, 4], [1, 5]]
    captured = captured_items(explainer, dataset, [probes[0], probes[1], probes[3]])
    split = scorer_results(setting, shares, captured, curves)
    assert split.keys() == single.keys()
    for name in single:
        assert torch.allclose(split[name], single[name], atol=1e-4, equal_nan=True), name


def test_ad_and_ic_are_those_of_each_probe_scored_alone(setting):
    _, dataset, provider, explainer, gallery, probes = setting
    results = scorer_results(setting, [list(range(len(probes)))])
    drops, increases = [], []
    for p in probes[:4]:  # the first num_faithfulness_samples probes, one at a time
        item = load(dataset, [p])
        probe = explainer.features(item["image"])
        references, _ = provider.rank(gallery, probe.embedding, torch.tensor([p]), 1)
        if references[0, 0] < 0:
            continue
        reference = gallery.embeddings[gallery.indices.tolist().index(int(references[0, 0]))][None]
        summed = explainer.explain("fam", probe, ProbeAgainst(reference))[:, -1]
        score = float(F.cosine_similarity(probe.embedding, reference)[0])
        masked = float(F.cosine_similarity(explainer.features(mask_images(item["image"], summed)).embedding, reference)[0])
        if score > 0:
            drops.append(max(0.0, score - max(masked, 0.0)) / score)
        increases.append(float(masked > score))
    assert increases, "no probe has a reference"
    assert float(results["loc/fam/ad"]) == pytest.approx(100 * sum(drops) / len(drops), abs=1e-3)
    assert float(results["loc/fam/ic"]) == pytest.approx(100 * sum(increases) / len(increases), abs=1e-6)


def test_curves_of_a_probe_are_its_masked_images_ranked_by_evaluate_rank(setting):
    """One probe, two steps, removed pixels 0: its points written out -- the intact probe, the probe
    without the top half of its map's pixels (deletion) or with only them (insertion), the fully
    removed probe -- each embedded, its cosine to the reference and its AP and first true match's rank
    against the whole gallery by ``evaluate_rank``; the AUCs the trapezoids of those points."""
    _, dataset, provider, explainer, gallery, probes = setting
    curves = CurveOptions(samples=1, steps=2, baseline="mean")
    results = scorer_results(setting, [list(range(len(probes)))], curves=curves)
    expected = {f"faith/{m}/{c}{s}_auc{ci}" for m in ("ram", "fam", "random", "center_prior")
                for c in ("deletion", "insertion") for s in ("", "_ap", "_rr") for ci in ("", "_ci95")}
    assert {k for k in results if k.startswith("faith/")} == expected
    p = probes[0]
    item = load(dataset, [p])
    probe = explainer.features(item["image"])
    references, _ = provider.rank(gallery, probe.embedding, torch.tensor([p]), 1)
    assert references[0, 0] >= 0
    reference = gallery.embeddings[gallery.indices.tolist().index(int(references[0, 0]))][None]
    heat = explainer.explain("fam", probe, ProbeAgainst(reference))[0, -1]
    order = torch.argsort(heat.flatten(), descending=True, stable=True)
    top = torch.zeros(heat.numel(), dtype=torch.bool)
    top[order[: heat.numel() // 2]] = True
    top = top.view(heat.shape)

    def points(keep):
        out = []
        for kept in keep:
            embedding = explainer.features(item["image"] * kept).embedding
            cmc, m_ap = evaluate_rank(
                pairwise_distance(embedding, gallery.embeddings), provider.pids[[p]], gallery.labels,
                provider.camids[[p]], gallery.cameras, max_rank=len(gallery),
            )
            similarity = float(F.cosine_similarity(embedding, reference)[0])
            out.append((similarity, m_ap, 1 / (int((cmc == 0).sum()) + 1)))
        return out

    everything, nothing = torch.ones_like(top), torch.zeros_like(top)
    deletion, insertion = points([everything, ~top, nothing]), points([nothing, top, everything])
    for curve, values in (("deletion", deletion), ("insertion", insertion)):
        for s, name in enumerate(("", "_ap", "_rr")):
            area = (values[0][s] / 2 + values[1][s] + values[2][s] / 2) / 2
            got = float(results[f"faith/fam/{curve}{name}_auc"])
            assert got == pytest.approx(area, abs=1e-4), (curve, name)


@pytest.mark.parametrize("methods", [["ram", "fam"], ["ram", "gradcam"]])
def test_perturbed_forwards_count_the_masked_images_scored_and_faithfulness_off_saves_them(setting, methods):
    """``perturbed_forwards`` is the number of images ``embed_masked`` is handed (AD / IC: one per method
    and probe, a layer method's on its gradient probes only; the curves': per curved probe the fully
    removed image and two per map and inner step); with ``faithfulness=False`` none, the same other
    scores, and ``compute_named`` skipping the untouched groups logs no AD / IC and no curve."""
    _, dataset, provider, explainer, gallery, probes = setting
    curves = CurveOptions(samples=3, steps=3)
    scorer = ProbeScorer(methods, num_faithfulness_samples=4, num_gradient_samples=2, curves=curves)
    results = {}
    for faithfulness in (True, False):
        handed: list[int] = []

        def embed(x):
            handed.append(len(x))
            return explainer.features(x).embedding

        scores = scorer.score(
            explainer, provider, gallery, probes, list(range(len(probes))), dataset[probes[0]], {},
            lambda indices: load(dataset, indices), 0.2, 4, embed, "cpu", faithfulness=faithfulness,
        )
        skip = () if faithfulness else ("faith", "curves")
        results[faithfulness] = scores.compute_named("loc", skip, "mine")
        scores.reset()
        layered = "gradcam" in methods
        ad_ic = 4 + (2 if layered else 4)  # ram on 4 probes, the second method on 2 (layer) or 4
        curved = 2 if layered else 3  # with a layer method only its probes get curves
        per_probe = 1 + 2 * (len(methods) + 2) * (3 - 1)
        expected = ad_ic + curved * per_probe if faithfulness else 0
        assert sum(handed) == expected
        if faithfulness:
            assert scorer.perturbed_forwards(len(probes)) == expected
    on, off = results[True], results[False]
    assert any(k.startswith("mine/random/") for k in on) and "loc/ram/ad" in on
    assert not any(k.startswith("mine/") or k.endswith(("/ad", "/ic", "/ad_ci95", "/ic_ci95")) for k in off)
    assert off.keys() <= on.keys()
    for name in off:
        assert torch.allclose(off[name], on[name], equal_nan=True), name
