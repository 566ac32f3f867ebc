"""Maps over training (``callbacks.maps_over_training``, held by ``ExplanationImages``): the logged
correlation against SciPy's Spearman correlation of the stored maps, the state through a checkpoint
file, the strip bounded and thinned evenly, and the callback end to end on a tiny synthetic set: the
maps are against each probe's fixed reference, so a new top-ranked reference moves no map."""

from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from scipy.stats import spearmanr

from callbacks.base import load_items
from callbacks.explanation_images import ExplanationImages
from callbacks.maps_over_training import MapsOverTraining, shrink_maps, thinned_position
from cama.models import CAMA
from cama.viz import ModelExplainer
from datamodules import ReIDDataModule
from datamodules.reid_datasets import QueryGalleryDataset
from tests.test_callbacks import TINY_DATA


def random_maps(seed: int, probes: int = 3, size: tuple[int, int] = (64, 32)) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.rand(probes, *size, generator=generator) for m in ("ram", "fam")}


def mean_spearman(before: torch.Tensor, after: torch.Tensor) -> float:
    """SciPy's Spearman correlation of each probe's two maps, averaged over the probes."""
    values = [spearmanr(a.flatten().numpy(), b.flatten().numpy())[0] for a, b in zip(before, after)]
    return float(np.mean(values))


def test_the_correlation_is_spearmans_of_the_stored_maps_of_the_same_probes():
    history = MapsOverTraining(max_epochs=4)
    assert history.update(0, [7, 3, 5], random_maps(0)) == {}  # nothing to compare with yet
    stored = {m: v.clone() for m, v in history.previous.items()}
    assert all(v.shape == (3, 32, 16) for v in stored.values())  # 32 pixels on the long side, the aspect kept
    scores = history.update(1, [3, 9, 7], random_maps(1))  # probe 9 is new, 5 is gone: rows 3 and 7 compare
    for method in ("ram", "fam"):
        before = stored[method][[1, 0]]  # probes 3, 7 of the first epoch
        after = history.previous[method][[0, 2]]  # probes 3, 7 of the second
        logged = float(scores[f"maps_drift/{method}/spearman"])
        assert logged == pytest.approx(mean_spearman(before, after), abs=1e-6)


def test_a_probe_with_a_constant_map_is_left_out_of_the_mean():
    history = MapsOverTraining()
    first = random_maps(2, probes=2)
    history.update(0, [1, 2], first)
    second = random_maps(3, probes=2)
    second["ram"][1] = 0.0  # a constant map has no rank correlation
    scores = history.update(1, [1, 2], second)
    expected = mean_spearman(history.previous["ram"][:1], shrink_maps(first["ram"], 32)[:1])
    assert float(scores["maps_drift/ram/spearman"]) == pytest.approx(expected, abs=1e-6)


def test_the_state_survives_a_checkpoint_file_and_a_resume_keeps_comparing(tmp_path):
    history = MapsOverTraining(max_epochs=3)
    for epoch in range(4):
        history.update(epoch, [4, 6], random_maps(10 + epoch, probes=2))
    path = tmp_path / "state.pt"
    torch.save(history.state_dict(), path)
    resumed = MapsOverTraining(max_epochs=3)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.epochs == history.epochs and resumed.indices == history.indices
    assert all(torch.equal(resumed.strip[m], history.strip[m]) for m in history.strip)
    following = random_maps(20, probes=2)
    expected = history.update(4, [4, 6], following)
    got = resumed.update(4, [4, 6], following)
    assert expected.keys() == got.keys() == {"maps_drift/ram/spearman", "maps_drift/fam/spearman"}
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert MapsOverTraining().state_dict() == {}  # nothing before the first epoch


def test_the_strip_keeps_at_most_max_epochs_the_first_and_the_latest_thinned_evenly():
    assert thinned_position([0, 1, 2, 3]) == 1
    assert thinned_position([0, 3, 5, 6]) == 2  # dropping epoch 5 leaves the gap 3..6, dropping 3 leaves 0..5
    history = MapsOverTraining(max_epochs=5)
    for epoch in range(40):
        history.update(epoch, [1], random_maps(epoch, probes=1))
        assert len(history.epochs) == min(epoch + 1, 5)
    assert history.epochs[0] == 0 and history.epochs[-1] == 39
    assert history.epochs == sorted(set(history.epochs))
    gaps = np.diff(history.epochs)
    assert gaps.max() <= 2 * gaps.min() + 1  # spread over the whole run, not bunched at its end
    assert all(v.shape == (5, 32, 16) for v in history.strip.values())
    probe = torch.zeros(3, 64, 32, dtype=torch.uint8)
    picture = history.picture(probe, 0.5, "jet", "strip")
    five_columns = picture.shape
    history.update(40, [1], random_maps(40, probes=1))
    assert history.picture(probe, 0.5, "jet", "strip").shape == five_columns  # bounded: no sixth column
    assert MapsOverTraining().picture(probe, 0.5, "jet", None) is None
    with pytest.raises(ValueError, match="max_epochs"):
        MapsOverTraining(max_epochs=1)


def tiny_setting() -> tuple[ReIDDataModule, CAMA, ExplanationImages]:
    """The tiny re-ID data, an untrained two-branch CAMA and a drawing callback with maps over training."""
    datamodule = ReIDDataModule(**TINY_DATA)
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = CAMA(num_classes=datamodule.num_classes, backbone="resnet10", num_branches=2).eval()
    return datamodule, model, ExplanationImages(methods=["ram", "dist_cam"], num_probes=2, num_ranking_queries=0)


def validate_once(model: CAMA, datamodule: ReIDDataModule, callback: ExplanationImages, tmp_path) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path, name="csv"), callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    return trainer


def test_explanation_images_log_the_drift_and_draw_the_strip_from_the_second_epoch(tmp_path):
    datamodule, model, callback = tiny_setting()

    def validate() -> pl.Trainer:
        return validate_once(model, datamodule, callback, tmp_path)

    first = validate()
    assert not any(k.startswith("maps_drift/") for k in first.callback_metrics)
    assert not any(p.endswith("over_training.png") for p in callback.last_written)
    state = copy.deepcopy(callback.state_dict())["maps_over_training"]
    assert state["indices"] == callback.probes.indices
    with torch.no_grad():  # the model moves on, as training would
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    second = validate()
    assert any(p.endswith("over_training.png") for p in callback.last_written)
    now = callback.state_dict()["maps_over_training"]
    for method in ("ram", "dist_cam"):
        logged = float(second.callback_metrics[f"maps_drift/{method}/spearman"])
        expected = mean_spearman(state["previous"][method], now["previous"][method])
        assert logged == pytest.approx(expected, abs=1e-5)
    restored = ExplanationImages(methods=["ram", "dist_cam"], num_probes=2, num_ranking_queries=0)
    restored.load_state_dict(callback.state_dict())
    assert torch.equal(restored.over_training.previous["ram"], now["previous"]["ram"])
    off = ExplanationImages(methods=["ram"], num_probes=2, num_ranking_queries=0, over_training_epochs=0)
    assert off.over_training is None and off.state_dict() == {"validation_epochs": 0, "probe_indices": []}


class CopiedImage(QueryGalleryDataset):
    """The query + gallery of ``dataset``, item ``target``'s image replaced by item ``source``'s."""

    def __init__(self, dataset: QueryGalleryDataset, source: int, target: int) -> None:
        super().__init__(dataset.query, dataset.gallery)
        self.source, self.target = source, target

    def __getitem__(self, item):
        out = super().__getitem__(item)
        if int(out["index"]) == self.target:
            out["image"] = super().__getitem__(self.source)["image"]
        return out


def test_a_new_top_ranked_reference_moves_no_map_the_fixed_one_is_kept_and_survives_a_resume(tmp_path):
    datamodule, model, callback = tiny_setting()

    def validate() -> pl.Trainer:
        return validate_once(model, datamodule, callback, tmp_path)

    validate()
    history = callback.over_training
    first = copy.deepcopy(history.state_dict()["maps_over_training"])
    probe = history.indices[0]  # the strip's probe
    fixed = history.references[probe]
    dataset = datamodule.val_dataset
    # a gallery image of another identity (never excluded) becomes the probe itself: distance 0, ranked first
    target = next(i for i in range(dataset.num_query, len(dataset))
                  if dataset.pids[i] != dataset.pids[probe] and i != fixed)
    datamodule.val_dataset = CopiedImage(dataset, probe, target)
    second = validate()  # the same model: only the probe's top-ranked reference changed
    images = load_items(datamodule.val_dataset, [probe, target, fixed])["image"]
    embedding = ModelExplainer(model).features(images).embedding
    distance = (embedding[1:] - embedding[0]).norm(dim=1)
    assert distance[0] == 0 < distance[1]  # the premise: the copy now ranks before the fixed reference
    assert history.references == first["references"] and history.references[probe] == fixed
    now = history.state_dict()["maps_over_training"]
    for method in ("ram", "dist_cam"):
        assert torch.equal(now["previous"][method], first["previous"][method])  # the very same maps
        assert torch.equal(now["strip"][method][0], now["strip"][method][1])
        assert float(second.callback_metrics[f"maps_drift/{method}/spearman"]) == pytest.approx(1.0, abs=1e-6)
    path = tmp_path / "state.pt"
    torch.save(callback.state_dict(), path)
    restored = ExplanationImages(methods=["ram", "dist_cam"], num_probes=2, num_ranking_queries=0)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.over_training.references == history.references
    kept = list(history.indices)
    assert restored.over_training.fixed_references(kept, [target] * len(kept)) == [
        history.references[i] for i in kept]  # a resumed run explains against the same references
