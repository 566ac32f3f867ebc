"""Bad input stops early and clearly: checkpoint files (init_from, ckpt_path) and unreadable images."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cama.errors import InputError
from cama.models import CAMA, ProtoNet, RetrievalModel
from cama.checkpoint_files import CheckpointFileError, read_checkpoint
from cama.models.checkpoints import InitFromMismatchError, load_matching_weights
from cama.runs import resume_problem
from datamodules import FewShotDataModule, ReIDDataModule, RetrievalDataModule, write_reid_layout
from datamodules.errors import UnreadableImageError
from datamodules.image_check import check_split_images, find_unreadable_images

REID = dict(num_train_ids=4, num_test_ids=3, num_cameras=2, cameras_per_id=(2, 2), images_per_camera=(1, 1),
            query_cameras=1, num_distractors=2, num_junk=1)


REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


# -- checkpoint files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory) -> Path:
    """A real Lightning checkpoint of this project (model and data module hyper-parameters,
    optimizer and loop state), saved by ``trainer.save_checkpoint`` after one training step."""
    dm = ReIDDataModule(dataset="synthetic", validate_on_test=True, image_size=(32, 16), p=2, k=2, eval_batch_size=8, num_workers=0,
                        synthetic=dict(num_train_ids=4, num_test_ids=3, num_distractors=2, num_junk=1))
    model = CAMA(num_classes=dm.num_classes, backbone="resnet10", num_branches=2)
    trainer = _trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, dm)
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    trainer.save_checkpoint(path)
    return path


def _bad_files(folder: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "random": np.random.default_rng(0).bytes(4000),
        "text": b"model weights, see the wiki\n",
        "empty": b"",
    }
    out = {}
    for name, content in files.items():
        out[name] = folder / f"{name}.ckpt"
        out[name].write_bytes(content)
    out["foreign"] = folder / "foreign.pt"
    torch.save({"model": nn.Linear(2, 2)}, out["foreign"])  # a pickled module, not a state dict
    out["pickle"] = folder / "plain.pkl"
    out["pickle"].write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    out["list"] = folder / "list.pt"
    torch.save([torch.zeros(2)], out["list"])
    return out


def test_project_checkpoint_reads_with_weights_only(lightning_ckpt):
    checkpoint = read_checkpoint(str(lightning_ckpt), "init_from")
    assert "hyper_parameters" in checkpoint and "optimizer_states" in checkpoint
    assert isinstance(checkpoint["state_dict"]["heads.0.classifier.weight"], torch.Tensor)
    assert resume_problem(str(lightning_ckpt), "cama.models.CAMA", "validate --ckpt_path") is None


BAD_KINDS = ["truncated", "random", "text", "empty", "foreign", "pickle", "list", "missing"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_corrupt_or_foreign_checkpoint_names_the_file(lightning_ckpt, tmp_path, kind):
    path = _bad_files(tmp_path, lightning_ckpt).get(kind, tmp_path / "missing.ckpt")
    message = resume_problem(str(path), "cama.models.CAMA", "validate --ckpt_path")
    assert message is not None and str(path) in message and "--ckpt_path" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert "Lightning checkpoint" in message
    with pytest.raises(CheckpointFileError, match="init_from") as err:
        load_matching_weights(nn.Linear(2, 2), str(path))
    assert str(path) in str(err.value)


def test_truncated_checkpoint_says_truncated(lightning_ckpt, tmp_path):
    path = _bad_files(tmp_path, lightning_ckpt)["truncated"]
    with pytest.raises(CheckpointFileError, match="truncated"):
        read_checkpoint(str(path), "init_from")


def test_matching_init_from_loads(lightning_ckpt):
    """A checkpoint of the same model with another number of identities: all but the classifiers load."""
    state = read_checkpoint(str(lightning_ckpt))["state_dict"]
    model = CAMA(num_classes=7, backbone="resnet10", num_branches=2)
    report = load_matching_weights(model, str(lightning_ckpt))
    assert "heads.0.classifier.weight (4, 512) -> (7, 512)" in report["skipped_shape"]
    assert len(report["loaded"]) == len(state) - 2
    torch.testing.assert_close(model.state_dict()["backbone.stem.0.weight"], state["backbone.stem.0.weight"])


def test_non_matching_init_from_stops_with_counts(tmp_path):
    model = CAMA(num_classes=5, backbone="resnet10", num_branches=2)
    own = model.state_dict()
    # the file: the first conv of this model, and tensors of another
    stem = {k: v.clone() + 1 for k, v in own.items() if k.startswith("backbone.stem.0.")}
    other = {"encoder.0.weight": torch.zeros(3, 3), "encoder.0.bias": torch.zeros(3)}
    path = tmp_path / "other_model.pt"
    torch.save({**stem, **other}, path)
    with pytest.raises(InitFromMismatchError) as err:
        load_matching_weights(model, str(path))
    message = str(err.value)
    assert str(path) in message
    assert f"{len(stem)} of its {len(own)} tensors" in message
    assert f"the file holds {len(stem) + len(other)} tensors" in message
    assert "encoder.0.weight" in message and "init_from_min_match: 0" in message
    torch.testing.assert_close(model.state_dict()["backbone.stem.0.weight"], own["backbone.stem.0.weight"])

    report = load_matching_weights(model, str(path), min_match=0.0)  # the user means it
    assert report["loaded"] == sorted(stem)
    torch.testing.assert_close(model.state_dict()["backbone.stem.0.weight"], stem["backbone.stem.0.weight"])


@pytest.mark.parametrize("build", [
    lambda **kw: CAMA(num_classes=5, backbone="resnet10", num_branches=2, **kw),
    lambda **kw: ProtoNet(num_classes=5, backbone="conv4", **kw),
    lambda **kw: RetrievalModel(num_classes=5, backbone="resnet10", embedding_size=16, knn="torch", **kw),
], ids=["CAMA", "ProtoNet", "RetrievalModel"])
def test_models_pass_init_from_min_match(build, tmp_path):
    path = tmp_path / "linear.pt"
    torch.save(nn.Linear(3, 5).state_dict(), path)
    strict = build(init_from=str(path))
    strict.trainer = _trainer()
    with pytest.raises(InitFromMismatchError, match=str(path)):
        strict.setup("fit")
    lenient = build(init_from=str(path), init_from_min_match=0.0)
    lenient.trainer = _trainer()
    lenient.setup("fit")  # loads the nothing that matches
    assert lenient.hparams.init_from_min_match == 0.0


# -- unreadable images ----------------------------------------------------------------------------


def _image(path: Path, fmt: str | None = None, size: tuple[int, int] = (24, 12)) -> Path:
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def test_find_unreadable_images_by_size_header_and_end(tmp_path):
    good = [_image(tmp_path / "a.jpg"), _image(tmp_path / "b.png"), _image(tmp_path / "c.bmp")]
    trailing = tmp_path / "trailer.jpg"  # data after the end marker: unusual but decodes
    trailing.write_bytes(good[0].read_bytes() + b"camera maker notes" * 10)
    renamed = _image(tmp_path / "png_named.jpg", fmt="PNG")
    bad = {
        "empty.jpg": b"",
        "cut.jpg": good[0].read_bytes()[:-300],
        "cut.png": good[1].read_bytes()[:-40],
        "cut.bmp": good[2].read_bytes()[:-100],
        "page.jpg": b"<html>404 Not Found</html>",
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(p) for p in [*good, trailing, renamed]] + [str(tmp_path / n) for n in bad]
    found = dict(find_unreadable_images(paths, workers=3))
    assert sorted(found) == sorted(str(tmp_path / n) for n in bad)
    assert found[str(tmp_path / "empty.jpg")] == "empty file (0 bytes)"
    assert "truncated JPEG" in found[str(tmp_path / "cut.jpg")]
    assert "truncated PNG" in found[str(tmp_path / "cut.png")]
    assert "truncated BMP" in found[str(tmp_path / "cut.bmp")]
    assert "not a JPEG" in found[str(tmp_path / "page.jpg")]


def test_error_lists_the_first_bad_files_and_the_count(tmp_path):
    paths = [str(tmp_path / f"{i:02d}.jpg") for i in range(14)]
    for p in paths:
        Path(p).write_bytes(b"")
    raw = {"gallery": SimpleNamespace(records=[SimpleNamespace(path=p) for p in paths])}
    with pytest.raises(UnreadableImageError) as err:
        check_split_images(raw, ["gallery"], set(), "market1501 at /data")
    message = str(err.value)
    assert "14 of the 14 images of the gallery split(s) of market1501 at /data" in message
    assert paths[9] in message and paths[10] not in message and "... and 4 more" in message
    assert "check_images: false" in message


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    return write_reid_layout(tmp_path_factory.mktemp("reid") / "Market", "market1501", seed=1, progress=False,
                             **REID)


class _Steps(pl.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args) -> None:
        self.batches += 1


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["image"].mean((2, 3))).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_zero_byte_gallery_image_is_found_at_setup_before_any_training_step(market, tmp_path):
    root = Path(shutil.copytree(market, tmp_path / "Market"))
    bad = sorted((root / "bounding_box_test").glob("*.jpg"))[-1]
    bad.write_bytes(b"")
    dm = ReIDDataModule(dataset="market1501", root=str(root), image_size=(32, 16), p=2, k=2, num_workers=0)
    steps = _Steps()
    trainer = _trainer(max_epochs=1, callbacks=[steps], num_sanity_val_steps=0)
    with pytest.raises(UnreadableImageError) as err:
        trainer.fit(_Tiny(), dm)
    assert f"{bad}: empty file (0 bytes)" in str(err.value) and "1 of the" in str(err.value)
    assert steps.batches == 0 and trainer.global_step == 0

    ReIDDataModule(dataset="market1501", root=str(root), check_images=False).setup("fit")  # turned off


def test_reid_check_covers_the_splits_of_the_stage(market, tmp_path):
    root = Path(shutil.copytree(market, tmp_path / "Market"))
    bad = sorted((root / "bounding_box_train").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    dm = ReIDDataModule(dataset="market1501", root=str(root), num_workers=0)
    dm.setup("test")  # query + gallery only
    with pytest.raises(UnreadableImageError, match="truncated JPEG"):
        dm.setup("fit")


def _class_folders(root: Path, splits: tuple[str, ...], classes: int = 3, images: int = 4) -> Path:
    for split in splits:
        for c in range(classes):
            folder = root / split / f"{split}_class{c}"
            folder.mkdir(parents=True)
            for i in range(images):
                _image(folder / f"{i}.jpg")
    return root


def test_few_shot_and_retrieval_check_their_splits(tmp_path):
    few = _class_folders(tmp_path / "few", ("train", "val", "test"))
    bad = few / "test" / "test_class1" / "2.jpg"
    bad.write_bytes(b"")
    FewShotDataModule(dataset="folders", root=str(few), num_workers=0).setup("validate")  # val only
    with pytest.raises(UnreadableImageError, match=str(bad)):
        FewShotDataModule(dataset="folders", root=str(few), num_workers=0).setup("test")
    with pytest.raises(UnreadableImageError, match=str(bad)):
        FewShotDataModule(dataset="folders", root=str(few), num_workers=0).setup("fit")

    ret = _class_folders(tmp_path / "ret", ("train", "test"))
    bad = ret / "train" / "train_class0" / "1.jpg"
    os.truncate(bad, 50)
    RetrievalDataModule("folders", root=str(ret), num_workers=0).setup("test")  # test split only
    with pytest.raises(UnreadableImageError, match=str(bad)):
        RetrievalDataModule("folders", root=str(ret), num_workers=0).setup("fit")
    RetrievalDataModule("folders", root=str(ret), num_workers=0, check_images=False).setup("fit")


# -- predictions files (evaluate.py) ----------------------------------------------------------------


def _predictions(path: Path, **extra) -> Path:
    """A retrieval predictions table (``train.py predict``'s keys) plus ``extra`` keys."""
    torch.save({"embedding": torch.randn(6, 4, generator=torch.Generator().manual_seed(0)),
                "label": torch.tensor([0, 0, 1, 1, 2, 2]), "index": torch.arange(6), **extra}, path)
    return path


def test_evaluate_refuses_a_few_shot_predictions_file_by_name(tmp_path):
    from callbacks.embedding_writer import EmbeddingWriter
    from evaluate import evaluate_file

    data = FewShotDataModule(dataset="synthetic", image_size=(32, 32), num_workers=0,
                             synthetic=dict(height=32, width=32, num_classes=15, few_shot_splits=(5, 5, 5),
                                            images_per_class=6))
    writer = EmbeddingWriter()
    trainer = _trainer(callbacks=[writer], default_root_dir=tmp_path)
    trainer.predict(ProtoNet(num_classes=5), datamodule=data, return_predictions=False)
    table = torch.load(writer.last_path)
    assert table["task"] == "few-shot" and table["format"] == "cama-predictions-2"
    assert {"embedding", "label", "index"} <= set(table)  # the keys of a retrieval file
    with pytest.raises(InputError) as err:
        evaluate_file(writer.last_path)
    message = str(err.value)
    assert str(writer.last_path) in message and "holds few-shot predictions" in message
    assert "evaluate.py scores re-ID and retrieval files" in message and "train.py test" in message


def test_predictions_task_from_the_model_then_the_keys():
    from callbacks.embedding_writer import predictions_task

    assert predictions_task(ProtoNet(num_classes=5), {"embedding": 0, "label": 0, "index": 0}) == "few-shot"
    other = nn.Linear(2, 2)  # no episodes: the keys decide
    assert predictions_task(other, {"embedding": 0, "pid": 0, "camid": 0, "is_query": 0}) == "re-id"
    assert predictions_task(other, {"embedding": 0, "logits": 0, "label": 0}) == "classification"
    assert predictions_task(other, {"embedding": 0, "label": 0, "index": 0}) == "retrieval"


def test_evaluate_refuses_classification_and_a_task_its_keys_do_not_fit(tmp_path):
    from evaluate import evaluate_file

    classified = _predictions(tmp_path / "classified.pt", logits=torch.zeros(6, 3), task="classification")
    with pytest.raises(InputError, match=f"{classified} holds classification predictions.*train.py test"):
        evaluate_file(classified)
    mislabelled = _predictions(tmp_path / "mislabelled.pt", task="re-id")  # no pid, camid, is_query
    with pytest.raises(InputError, match=f"{mislabelled} says task 're-id' but has keys"):
        evaluate_file(mislabelled)
    with pytest.raises(InputError, match="unknown task 'segmentation'"):
        evaluate_file(_predictions(tmp_path / "other.pt", task="segmentation"))
    # retrieval, said or not (a cama-predictions-1 file has no task): scored by its keys
    assert evaluate_file(_predictions(tmp_path / "said.pt", task="retrieval")) == evaluate_file(
        _predictions(tmp_path / "old.pt"))


@pytest.mark.parametrize("damage, reason", [("empty", "is empty (0 bytes)"), ("truncated", "truncated")])
def test_evaluate_names_an_empty_or_truncated_predictions_file(tmp_path, damage, reason):
    from evaluate import main

    path = _predictions(tmp_path / "predictions.pt")
    path.write_bytes(b"" if damage == "empty" else path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        main([str(path)])
    message = str(err.value)
    assert str(path) in message and reason in message
    assert "a predictions file written by `train.py predict`" in message
    assert "\n" not in message and "Errno" not in message


def test_evaluate_command_ends_a_truncated_file_with_one_line_and_status_2(tmp_path):
    import subprocess
    import sys

    path = _predictions(tmp_path / "predictions.pt")
    path.write_bytes(path.read_bytes()[:300])
    result = subprocess.run([sys.executable, "evaluate.py", str(path)], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("evaluate.py: error: ") and str(path) in last and "truncated" in last
