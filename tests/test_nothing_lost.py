"""Nothing lost: a failed resume, a diverging loss, a second run of a config or a SIGTERM during
validation never cost a researcher the run they had (subprocesses of ``train.py``, CPU)."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.test_interrupt import CONFIG, last_line, run

TINY = [
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--test_after_fit",
    "false",
    "--data.init_args.image_size",
    "[32, 16]",
    "--data.init_args.p",
    "4",
    "--data.init_args.k",
    "2",
    "--data.init_args.eval_batch_size",
    "8",
    "--data.init_args.num_workers",
    "0",
    "--data.init_args.synthetic.num_train_ids",
    "10",
    "--data.init_args.val_ids",
    "2",
    "--data.init_args.synthetic.num_test_ids",
    "6",
    "--data.init_args.synthetic.num_distractors",
    "4",
    "--data.init_args.synthetic.num_junk",
    "2",
]

pytestmark = pytest.mark.slow


class SignalInValidation(Callback):
    """Sends SIGTERM to its own process after the first validation batch of epoch ``epoch`` (-1: never)."""

    def __init__(self, epoch: int = -1) -> None:
        self.epoch = epoch

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class ValidationLog(Callback):
    """Appends the epoch of every validation that ended with a ``Val/mAP`` score to the file ``path``."""

    def __init__(self, path: str = "") -> None:
        self.path = path

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and "Val/mAP" in trainer.callback_metrics:
            with open(self.path, "a") as f:
                f.write(f"{trainer.current_epoch}\n")


def fit(workdir: Path, *args: str):
    return run(workdir, "fit", "--config", str(CONFIG), *TINY, *args)


def digests(root: Path) -> dict[str, str]:
    """sha256 of every checkpoint under ``root``, by path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.ckpt"))
    }


def versions(workdir: Path) -> Path:
    return workdir / "runs" / "cama_synthetic"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Two runs of the main config in one folder: 2 epochs, then 1 epoch with another seed."""
    workdir = tmp_path_factory.mktemp("two_runs")
    first = fit(workdir, "--trainer.max_epochs", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    before = digests(versions(workdir))
    assert before, "the first run wrote checkpoints"
    second = fit(workdir, "--trainer.max_epochs", "1", "--seed_everything", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    return workdir, before


def test_a_second_run_of_a_config_leaves_the_first_runs_checkpoints_byte_identical(two_runs):
    workdir, first = two_runs
    now = digests(versions(workdir))
    assert {k: now.get(k) for k in first} == first
    second = set(now) - set(first)
    assert second and all(k.startswith("version_1/checkpoints/") for k in second), sorted(now)


def test_a_failed_resume_touches_nothing_and_last_then_resumes_the_original_step(two_runs):
    workdir, _ = two_runs
    root = versions(workdir)
    last = root / "version_1" / "checkpoints" / "last.ckpt"  # the run written to last: 1 epoch, step 3
    state = digests(root)

    other_model = fit(
        workdir, "--trainer.max_epochs", "3", "--model.init_args.num_branches", "3", "--ckpt_path", "last"
    )
    assert other_model.returncode == 2, other_model.stderr[-3000:]
    assert "num_branches: checkpoint 2, here 3" in last_line(other_model) and str(
        Path("runs") / last.relative_to(workdir / "runs")
    ) in last_line(other_model)

    foreign = workdir / "foreign.ckpt"  # a checkpoint of another task (few-shot) given to the re-ID config
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "cama.models.ProtoNet"
    torch.save(checkpoint, foreign)
    other_task = fit(workdir, "--trainer.max_epochs", "3", "--ckpt_path", str(foreign))
    assert other_task.returncode == 2, other_task.stderr[-3000:]
    assert "is a checkpoint of cama.models.ProtoNet, not of cama.models.CAMA" in last_line(other_task)
    assert digests(root) == state, "a failed resume wrote or changed a checkpoint"

    resumed = fit(workdir, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{Path('runs') / last.relative_to(workdir / 'runs')} (epoch 0, step 3)" in resumed.stderr
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (1, 6)  # went on from step 3, in its own folder
    assert not (root / "version_2").exists()


def test_a_corrupt_checkpoint_is_named_and_the_previous_good_one_offered_and_resumed(tmp_path):
    done = fit(tmp_path, "--trainer.max_epochs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = versions(tmp_path) / "version_0" / "checkpoints"
    best = next(folder.glob("best-*.ckpt"))
    last = folder / "last.ckpt"
    last.write_bytes(b"")  # what a SIGKILL during a copy across file systems leaves

    explicit = fit(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", str(last))
    assert explicit.returncode == 2
    line = last_line(explicit)
    assert f"{last} is empty (0 bytes)" in line and f"--ckpt_path {best}" in line, line

    resumed = fit(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "passes over" in resumed.stderr and "last.ckpt is empty (0 bytes)" in resumed.stderr
    assert f"{best.name} (epoch 0, step 3)" in resumed.stderr
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6


def test_a_diverging_loss_stops_at_its_step_and_leaves_only_finite_checkpoints(tmp_path):
    diverged = fit(tmp_path, "--trainer.max_epochs", "3", "--model.init_args.lr", "1e8")
    assert diverged.returncode == 2, diverged.stderr[-3000:]
    line = last_line(diverged)
    assert "TrainingDivergedError: the training diverged at epoch" in line and "was not applied" in line, line
    for path in (tmp_path / "runs").rglob("*.ckpt"):
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path


def test_sigterm_during_validation_then_resume_validates_every_epoch(tmp_path):
    log = tmp_path / "validated.txt"
    args = [
        "--trainer.max_epochs",
        "2",
        "--trainer.callbacks+=tests.test_nothing_lost.SignalInValidation",
        "--trainer.callbacks.init_args.epoch",
        "0",
        "--trainer.callbacks+=tests.test_nothing_lost.ValidationLog",
        "--trainer.callbacks.init_args.path",
        str(log),
    ]
    stopped = fit(tmp_path, *args)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert log.read_text().split() == ["0"], "the held SIGTERM let epoch 0's validation end"
    line = last_line(stopped)
    resume = shlex.split(line.split("Resume with: ", 1)[1])[2:]
    resume[resume.index("--trainer.callbacks.init_args.epoch") + 1] = "-1"
    finished = run(tmp_path, *resume)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert log.read_text().split() == ["0", "1"]
    assert len(list((tmp_path / "runs").rglob("best-*.ckpt"))) == 1
