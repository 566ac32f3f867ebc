"""The parts that keep a run safe, in process: which checkpoint resumes a run, whether it fits, the
checkpoint writer, the held SIGTERM and the non-finite guard."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.interrupt_checkpoint import HeldSignal
from callbacks.model_checkpoint import FiniteModelCheckpoint
from callbacks.non_finite import NonFiniteGuard, TrainingDivergedError
from callbacks.checkpoint_io import NonFiniteWeightsError, SafeCheckpointIO
from cama.checkpoint_files import CheckpointFileError
from cama.runs import (
    CheckpointMismatchError,
    RunLayout,
    check_state_fits,
    checkpoint_to_resume,
    hparam_differences,
)
from train import resume_command


def lightning_file(
    path: Path, step: int, weight: float = 1.0, class_path: str = "cama.models.CAMA", age_s: float = 0.0
) -> Path:
    """A minimal Lightning checkpoint at ``path``, its modification time ``age_s`` seconds in the past."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "epoch": 0,
            "global_step": step,
            "state_dict": {"w": torch.full((2,), weight)},
            "hyper_parameters": {"_class_path": class_path},
        },
        path,
    )
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_layout_of_the_configs_logger_folders():
    trainer = {
        "default_root_dir": "work",
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs", "name": "job", "version": None},
        },
    }
    assert RunLayout.from_trainer_config(trainer) == RunLayout((), os.path.join("runs", "job"), None, "work")
    trainer["logger"]["init_args"]["version"] = 3
    assert RunLayout.from_trainer_config(trainer).folders() == [
        Path("runs", "job", "version_3", "checkpoints")
    ]
    assert RunLayout.from_trainer_config({**trainer, "logger": False}).folders() == [
        Path("work", "checkpoints")
    ]
    assert RunLayout.from_trainer_config({**trainer, "logger": None}).root == os.path.join(
        "work", "lightning_logs"
    )
    fixed = {
        **trainer,
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "shared"}},
            ModelCheckpoint(dirpath="other"),
        ],
    }
    assert RunLayout.from_trainer_config(fixed).folders() == [
        Path("shared"),
        Path("other").resolve(),
    ]  # (made absolute)


def test_last_resumes_the_run_written_to_last_from_its_newest_good_checkpoint(tmp_path):
    root = tmp_path / "job"
    lightning_file(root / "version_0" / "checkpoints" / "last.ckpt", 40, age_s=300)
    best = lightning_file(root / "version_1" / "checkpoints" / "best.ckpt", 5, age_s=200)
    nan = lightning_file(
        root / "version_1" / "checkpoints" / "last-interrupted.ckpt", 9, float("nan"), age_s=100
    )
    empty = root / "version_1" / "checkpoints" / "last.ckpt"
    empty.write_bytes(b"")
    layout = RunLayout(root=str(root))
    found, passed = checkpoint_to_resume(layout.folders(), "cama.models.CAMA")
    assert found == best  # not version_0's newer-step file: that is another run
    assert [str(empty) in passed[0], str(nan) in passed[1]] == [True, True]
    assert "empty (0 bytes)" in passed[0] and "non-finite weights" in passed[1]


def test_a_newest_run_with_nothing_resumable_is_an_error_naming_the_other_runs(tmp_path):
    root = tmp_path / "job"
    good = lightning_file(root / "version_0" / "checkpoints" / "last.ckpt", 40, age_s=300)
    (root / "version_1" / "checkpoints").mkdir(parents=True)
    (root / "version_1" / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointFileError) as err:
        checkpoint_to_resume(RunLayout(root=str(root)).folders())
    assert "version_1" in str(err.value) and str(good) in str(err.value)
    assert checkpoint_to_resume([tmp_path / "nothing"]) == (None, [])


def test_a_checkpoint_of_another_class_is_not_resumed(tmp_path):
    folder = tmp_path / "v" / "checkpoints"
    lightning_file(folder / "last.ckpt", 3, class_path="cama.models.ProtoNet")
    with pytest.raises(
        CheckpointFileError, match="is a checkpoint of cama.models.ProtoNet, not of cama.models.CAMA"
    ):
        checkpoint_to_resume([folder], "cama.models.CAMA")


def test_hparam_differences_name_each_changed_option():
    saved = {"_class_path": "x.Y", "num_branches": 2, "lr": 1e-3, "image_size": (64, 32), "num_classes": 10}
    given = {"num_branches": 3, "lr": 1e-3, "image_size": [64, 32], "num_classes": None, "new_option": 1}
    assert hparam_differences(saved, given, ignore=["num_classes"]) == ["num_branches: checkpoint 2, here 3"]


def test_a_state_of_another_architecture_lists_missing_unexpected_and_shapes():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = {"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(5), "2.weight": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError) as err:
        check_state_fits({"state_dict": state}, "x.ckpt", model, "fit --ckpt_path")
    message = str(err.value)
    assert "x.ckpt does not fit this run's Sequential" in message
    assert "2 tensors of the model are not in the file, e.g. ['1.bias', '1.weight']" in message
    assert "1 tensors of the file are not in the model, e.g. ['2.weight']" in message
    assert "0.bias (5,) in the file, (4,) here" in message
    check_state_fits({"state_dict": model.state_dict()}, "x.ckpt", model, "fit --ckpt_path")  # fits: no error


def test_safe_checkpoint_io_refuses_non_finite_weights_and_never_leaves_a_part(tmp_path):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(NonFiniteWeightsError, match=r"not saving .*last.ckpt: 1 tensors .*\['w'\]"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("inf")])}}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")  # a write that fails half-way

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "extra": Unpicklable()}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))


def test_a_held_signal_reaches_its_handler_only_when_released():
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        held = HeldSignal(int(signal.SIGUSR1))
        assert held.hold()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert seen == [] and held.arrived is not None
        assert held.release() is True
        assert seen == [signal.SIGUSR1]
        assert (
            held.hold() and held.release() is False and seen == [signal.SIGUSR1]
        )  # no signal, nothing raised
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_the_resume_command_names_the_checkpoint():
    argv = ["train.py", "fit", "--config", "c.yaml", "--ckpt_path", "x.ckpt", "--seed_everything=1"]
    assert resume_command(argv, "runs/j/version_2/checkpoints/last-interrupted.ckpt") == (
        "python train.py fit --config c.yaml --seed_everything=1 "
        "--ckpt_path runs/j/version_2/checkpoints/last-interrupted.ckpt"
    )
    assert resume_command([*argv[:4], "--ckpt_path=last"], "a b.ckpt") == (
        "python train.py fit --config c.yaml --ckpt_path 'a b.ckpt'"
    )


# ------------------------------------------------------------------------------------------- the guard
class Diverging(pl.LightningModule):
    """A linear model trained by Adam whose loss is NaN at the training steps ``bad``, with a BN layer
    (its running statistics must survive a skipped step)."""

    def __init__(self, bad: tuple[int, ...] = (), nan_score: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer, self.norm = nn.Linear(3, 1), nn.BatchNorm1d(3)
        self.bad, self.nan_score = bad, nan_score

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.norm(x)).pow(2).mean()

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch[0])
        if self.global_step in self.bad:
            loss = loss * float("nan")
        return {"loss": loss, "square_term": loss.detach()}

    def validation_step(self, batch, batch_idx):
        self.log("Val/mAP", float("nan") if self.nan_score else 0.5)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)


def batches(n: int = 5) -> list[torch.Tensor]:
    return list(torch.randn(n, 4, 3, generator=torch.Generator().manual_seed(1)))


def fit(
    module: pl.LightningModule, guard: NonFiniteGuard, root: Path, val: bool = False, callbacks: tuple = ()
) -> pl.Trainer:
    data = DataLoader(TensorDataset(torch.stack(batches()).flatten(0, 1)), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[guard, *callbacks],
        logger=False,
        enable_checkpointing=bool(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        num_sanity_val_steps=0,
        limit_val_batches=1 if val else 0,
    )
    trainer.fit(module, data, data if val else None)
    return trainer


def by_hand(skip: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The same model after Adam on the same batches with the ``skip`` batches left out, written out."""
    model = Diverging()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for i, x in enumerate(batches()):
        if i in skip:
            continue
        optimizer.zero_grad()
        model.loss(x).backward()
        optimizer.step()
    return model.state_dict()


def test_a_skipped_step_leaves_the_model_as_if_its_batch_had_not_been_seen(tmp_path):
    module = Diverging(bad=(2,))
    guard = NonFiniteGuard(max_skipped_steps=1)
    with pytest.warns(
        UserWarning, match=r"skipped the step at epoch 0, batch 2 \(training step 2\): loss=nan"
    ):
        fit(module, guard, tmp_path)
    assert guard.skipped == 1
    expected = by_hand(skip=(2,))
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)


def test_a_non_finite_loss_over_the_budget_stops_with_the_step_and_its_terms(tmp_path):
    module = Diverging(bad=(1, 3))
    with pytest.warns(UserWarning, match="skipped the step"):
        with pytest.raises(TrainingDivergedError) as err:
            fit(module, NonFiniteGuard(max_skipped_steps=1), tmp_path)
    message = str(err.value)
    assert "diverged at epoch 0, batch 3 (training step 3): loss=nan, square_term=nan" in message
    assert "1 skipped steps allowed and used" in message and "none was saved yet" in message
    expected = by_hand(skip=(1, 3, 4))  # stopped before batch 4; batch 3 not applied
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)


def test_a_nan_score_is_never_kept_as_best(tmp_path):
    best = FiniteModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="Val/mAP", mode="max")
    with pytest.warns(UserWarning, match="Val/mAP is nan at epoch 0: not kept as a best checkpoint"):
        trainer = fit(Diverging(nan_score=True), NonFiniteGuard(), tmp_path, val=True, callbacks=(best,))
    assert trainer.state.finished and best.best_model_path == ""
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())


def test_max_skipped_steps_is_checked():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_skipped_steps"):
            NonFiniteGuard(bad)
