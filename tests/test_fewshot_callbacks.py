"""``FewShotExplanations`` in a validation loop of a tiny ProtoNet on the synthetic classes (CPU, seconds)."""

from __future__ import annotations

import math
import statistics
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from callbacks.fewshot_explanations import FewShotExplanations
from cama.explain import postprocess
from cama.metrics.faithfulness import mask_images
from cama.metrics.localization import energy_pointing_game
from cama.models import ProtoNet
from cama.viz.episodes import probe_rows
from datamodules import FewShotDataModule

EPISODES = 2


@pytest.fixture(scope="module")
def datamodule() -> FewShotDataModule:
    dm = FewShotDataModule(
        dataset="synthetic",
        image_size=(32, 32),
        synthetic=dict(height=32, width=32, num_classes=15, few_shot_splits=(5, 5, 5), images_per_class=6),
        eval_way=3,
        eval_shot=2,
        eval_query=2,
        val_episodes=3,
        num_workers=0,
    )
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def model(datamodule) -> ProtoNet:
    torch.manual_seed(0)
    return ProtoNet(num_classes=5, backbone="conv4", metric="cosine").eval()


def validate(model, datamodule, callback, tmp_path: Path) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path, name="csv"),
        callbacks=[callback],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    return trainer


def naive_dist_cam_scores(
    model: ProtoNet, batches: list[dict], mean, std, faithful: int | None = None
) -> tuple[float, float, float, float, float]:
    """Dist-CAM of each query against the prototype of the class it is nearest to, written out:
    its energy, and AD / IC (fam Eq. 21-22) with one forward per masked query, of the first
    ``faithful`` queries (all: None), then the half-widths of AD's normal and IC's Agresti-Coull 95%
    intervals."""
    scores, drops, rises = [], [], []
    with torch.no_grad():
        for batch in batches:
            maps = model.backbone(batch["image"])
            pooled = maps.mean(dim=(2, 3))
            labels, is_query = batch["episode_labels"], batch["is_query"]
            ways = int(labels.max()) + 1
            prototypes = torch.stack([pooled[(labels == c) & ~is_query].mean(0) for c in range(ways)])
            queries = is_query.nonzero().squeeze(1)
            for q in queries.tolist():  # one query at a time, on purpose
                cosine = F.cosine_similarity(pooled[q][None], prototypes, dim=1)
                predicted = int(cosine.argmax())
                distance = (prototypes[predicted] - pooled[q]).abs()
                weights = (1 / (distance + 1e-8)) / (1 / (distance + 1e-8)).sum()  # dist-cam Eq. 5-6
                raw = (weights[:, None, None] * maps[q]).sum(0)
                cam = postprocess(raw[None, None], batch["image"].shape[-2:])[0]
                scores.append(energy_pointing_game(cam, batch["box"][q][None].float()))
                masked = mask_images(batch["image"][q][None], cam, mean, std)
                logits = model.logits(torch.stack([pooled[q], model.backbone(masked).mean(dim=(2, 3))[0]]), prototypes)
                y, o = logits.softmax(1)[:, predicted].tolist()
                drops.append(max(0.0, y - max(o, 0.0)) / y)
                rises.append(float(o > y))
    drops, rises = drops[:faithful], rises[:faithful]
    n = len(drops)
    ad_ci = 100 * 1.96 * statistics.stdev(drops) / math.sqrt(n)  # normal
    shrunk_n = n + 1.96**2  # Agresti-Coull
    shrunk = (sum(rises) + 1.96**2 / 2) / shrunk_n
    ic_ci = 100 * 1.96 * math.sqrt(shrunk * (1 - shrunk) / shrunk_n)
    return float(torch.cat(scores).mean()), 100 * sum(drops) / n, 100 * sum(rises) / n, ad_ci, ic_ci


def test_scores_and_pictures_of_queries_against_their_predicted_class(model, datamodule, tmp_path):
    callback = FewShotExplanations(methods=["dist_cam", "fam", "gradcam"], num_episodes=EPISODES, num_probes=3)
    trainer = validate(model, datamodule, callback, tmp_path)
    results = callback.last_results
    for method in ("dist_cam", "fam", "gradcam"):
        for name in ("box_iou", "box_acc", "top1_loc_err", "max_box_acc", "energy", "center_box_iou",
                     "otsu_miou", "ad", "ic"):
            assert f"loc/{method}/{name}" in results, (method, name)
    assert {"loc/center_baseline/box_iou", "loc/uniform_baseline/energy"} <= results.keys()
    # the logged energy equals the naive computation over the same first episodes
    batches = [b for _, b in zip(range(EPISODES), datamodule.val_dataloader())]
    energy, ad, ic, ad_ci, ic_ci = naive_dist_cam_scores(model, batches, datamodule.mean, datamodule.std)
    assert results["loc/dist_cam/energy"] == pytest.approx(energy, abs=1e-4)
    # AD / IC of the one batched forward of every method's masked queries = one query at a time
    assert results["loc/dist_cam/ad"] == pytest.approx(ad, abs=1e-3)
    assert results["loc/dist_cam/ic"] == pytest.approx(ic, abs=1e-4)
    assert results["loc/dist_cam/ad_ci95"] == pytest.approx(ad_ci, abs=1e-3)
    assert results["loc/dist_cam/ic_ci95"] == pytest.approx(ic_ci, abs=1e-3)
    # the uniform map's energy is the boxes' share of the image
    queries = torch.cat([b["box"][b["is_query"]] for b in batches]).float()
    share = ((queries[:, 2] - queries[:, 0]) * (queries[:, 3] - queries[:, 1]) / (32 * 32)).mean()
    assert results["loc/uniform_baseline/energy"] == pytest.approx(float(share), abs=0.05)
    folder = Path(trainer.log_dir) / "explanations" / "epoch_000"
    assert sorted(p.name for p in folder.glob("*.png")) == ["dist_cam.png", "fam.png", "gradcam.png"]
    # the period is fixed at the first scored epoch from the validation's images (each embedded once)
    images = len(datamodule.val_dataloader().dataset)
    period = callback.budget.period_for(callback.scorer.perturbed_forwards(), images)
    budget = {"faithfulness_period": period, "faithfulness_epochs": 1}
    assert callback.state_dict() == {"validation_epochs": 1, **budget}


def test_misclassified_queries_get_a_row_why_their_class_beat_the_true_class(model, datamodule, tmp_path):
    """The untrained model misclassifies some of the first episode's queries: the picture gains a row
    (at least a tile high) under each of them, and none without ``contrastive``."""
    heights = {}
    for contrastive in (True, False):
        callback = FewShotExplanations(methods=["ram"], num_episodes=1, num_probes=6,
                                       num_faithfulness_samples=0, deletion_steps=0, contrastive=contrastive)
        trainer = validate(model, datamodule, callback, tmp_path / str(contrastive))
        with Image.open(Path(trainer.log_dir) / "explanations" / "epoch_000" / "ram.png") as picture:
            heights[contrastive] = picture.size[1]
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        refs = model.episode_references(batch, model.feature_maps(batch["image"]))
    wrong = int((refs.prediction != refs.target)[probe_rows(refs.target, 6)].sum())
    assert 0 < wrong < 6
    assert heights[True] - heights[False] >= 128 * wrong
    assert heights[True] - heights[False] < 2 * 128 * wrong


def test_same_probes_every_epoch_and_every_n_epochs(model, datamodule, tmp_path):
    callback = FewShotExplanations(
        methods=["fam"], num_episodes=1, num_probes=2, every_n_epochs=2, faithfulness_budget=None
    )
    validate(model, datamodule, callback, tmp_path / "a")
    first = dict(callback.last_results)
    assert first
    callback.last_results = {}
    validate(model, datamodule, callback, tmp_path / "b")
    assert callback.last_results == {} and callback.schedule.validation_epochs == 2
    validate(model, datamodule, callback, tmp_path / "c")
    assert callback.last_results == pytest.approx(first)  # the same (fixed) episodes, the same weights


def test_bad_methods_and_models_without_episodes_are_reported(datamodule, tmp_path):
    with pytest.raises(ValueError, match="few-shot explanations support"):
        FewShotExplanations(methods=["cam"])

    class NotFewShot(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def validation_step(self, batch, batch_idx):
            return None

    callback = FewShotExplanations(num_episodes=1)
    with pytest.warns(UserWarning, match="episode_references"):
        trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=1)
        trainer.validate(NotFewShot(), datamodule=datamodule, verbose=False)
    assert callback.last_results == {}


@pytest.mark.parametrize("eval_cache, faithful", [(True, None), (False, None), (True, 8)])
def test_episode_images_are_forwarded_once_the_masked_queries_once_more(
    datamodule, tmp_path, eval_cache, faithful
):
    """The callback takes the episodes' maps from the validation steps (with the model's evaluation
    cache: an image's maps from the first episode that held it); its own forwards are the masked
    queries of AD / IC, once per method, ``num_faithfulness_samples`` of them (8: 6 queries of the
    first episode, 2 of the second), and the perturbed queries of the deletion / insertion curves.
    Counted at the backbone, against the same validation without the callback; the scores equal those
    of a model that returns every row's maps, and AD / IC those written out over the same first
    queries."""
    torch.manual_seed(0)
    model = ProtoNet(num_classes=5, backbone="conv4", metric="cosine", eval_cache=eval_cache).eval()
    forwarded: list[int] = []
    model.backbone.register_forward_hook(lambda module, args, out: forwarded.append(len(args[0])))

    def run(model, callbacks):
        trainer = pl.Trainer(
            accelerator="cpu", logger=False, callbacks=callbacks, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
        )
        trainer.validate(model, datamodule=datamodule, verbose=False)

    run(model, [])
    plain, forwarded[:] = sum(forwarded), []
    methods = ["dist_cam", "fam"]
    samples = {} if faithful is None else {"num_faithfulness_samples": faithful}
    callback = FewShotExplanations(methods=methods, num_episodes=EPISODES, num_probes=0, **samples)
    run(model, [callback])
    batches = [b for _, b in zip(range(EPISODES), datamodule.val_dataloader())]
    queries = sum(int(b["is_query"].sum()) for b in batches)
    assert faithful is None or faithful < queries
    curves = callback.scorer.curves  # the deletion / insertion curves of the first queries: their stated cost
    perturbed = min(queries, curves.samples) * curves.images_scored(len(methods) + 2)
    assert perturbed == 8 * (1 + 2 * 4 * 3)
    assert sum(forwarded) - plain == len(methods) * min(queries, faithful or queries) + perturbed
    other = ProtoNet(num_classes=5, backbone="conv4", metric="cosine", eval_cache=not eval_cache).eval()
    other.load_state_dict(model.state_dict())
    reference = FewShotExplanations(methods=methods, num_episodes=EPISODES, num_probes=0, **samples)
    run(other, [reference])
    assert callback.last_results == pytest.approx(reference.last_results, abs=1e-4)
    _, ad, ic, _, _ = naive_dist_cam_scores(model, batches, datamodule.mean, datamodule.std, faithful)
    assert callback.last_results["loc/dist_cam/ad"] == pytest.approx(ad, abs=1e-3)
    assert callback.last_results["loc/dist_cam/ic"] == pytest.approx(ic, abs=1e-4)


def test_probe_capture_reads_maps_of_part_of_a_batch():
    """ProbeCapture with a step that returned the maps of rows 1 and 3 only (``map_index``)."""
    from callbacks.base import MapsByIndex, ProbeCapture

    batch = {
        "image": torch.arange(4.0)[:, None, None, None].expand(4, 3, 2, 2),
        "index": torch.tensor([7, 8, 9, 10]),
        "label": torch.tensor([0, 1, 2, 3]),
    }
    maps = torch.tensor([80.0, 100.0])[:, None, None, None].expand(2, 5, 1, 1)  # rows of indices 8 and 10
    outputs = {"feature_maps": [maps], "map_index": torch.tensor([8, 10])}
    capture = ProbeCapture(wanted=[7, 10])
    capture.add(outputs, batch)
    assert list(capture.captured) == [10]  # 7's maps did not come
    assert int(capture.captured[10]["label"]) == 3 and float(capture.captured[10]["image"][0, 0, 0]) == 3.0
    assert float(capture.captured[10]["maps"][0][0, 0, 0]) == 100.0
    store = MapsByIndex()
    store.add(outputs, batch)
    computed: list[int] = []

    def compute(images):
        computed.append(len(images))
        return [images[:, :1].mean(dim=(2, 3), keepdim=True).expand(-1, 5, 1, 1) * 10]

    rows = store.batch_maps(batch, compute)[0][:, 0, 0, 0]
    assert rows.tolist() == [0.0, 80.0, 20.0, 100.0] and computed == [2]  # rows 0 and 2 computed once


def test_model_and_data_module_eval_caches_may_differ_under_a_logger(datamodule, tmp_path):
    """ProtoNet's eval_cache (embeddings) and the data module's (images) are separate options; a run
    with a logger used to stop at its start when they differed (Lightning's hparams merge)."""
    import yaml

    model = ProtoNet(num_classes=5, backbone="conv4", metric="cosine", eval_cache=False).eval()
    assert datamodule.eval_cache
    trainer = validate(model, datamodule, FewShotExplanations(num_episodes=1, num_probes=0), tmp_path)
    hparams = yaml.unsafe_load((Path(trainer.log_dir) / "hparams.yaml").read_text())  # tuples
    assert hparams["eval_cache"] is False  # the model's


def test_ad_ic_and_curves_run_on_the_faithfulness_budget_s_epochs(model, datamodule, tmp_path):
    """A budget the perturbed forwards exceed by 1.5 times the validation's images: AD / IC and the
    curves on the 1st and 3rd of three validations, the other scores on all three."""
    from callbacks.fewshot_explanations import validation_images

    callback = FewShotExplanations(methods=["dist_cam"], num_episodes=1, num_probes=0,
                                   num_faithfulness_samples=4, deletion_samples=1, deletion_steps=2)
    images = len(datamodule.val_dataloader().dataset)
    callback.budget = type(callback.budget)(callback.scorer.perturbed_forwards() / images / 1.5)
    logged = []
    for _ in range(3):
        trainer = validate(model, datamodule, callback, tmp_path)
        assert validation_images(trainer) == images
        logged.append(set(callback.last_results))
    assert callback.budget.period == 2 and logged[1]
    ends = ("/ad", "/ic", "/ad_ci95", "/ic_ci95")
    perturbed = {k for k in logged[0] if k.endswith(ends) or k.startswith("faith/")}
    assert {"faith/dist_cam/deletion_auc", "faith/random/insertion_auc"} <= perturbed
    assert any(k.endswith("/ad") for k in perturbed) and perturbed <= logged[2] and not perturbed & logged[1]
    assert logged[0] - perturbed == logged[1]
