"""A fit stopped by SIGTERM or Ctrl-C saves a checkpoint, exits non-zero and resumes; untrained
weights are named as such (subprocesses of ``train.py``, CPU)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cama_synthetic.yaml"
TINY = [
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--model.init_args.backbone", "resnet10",
    "--data.init_args.image_size", "[32, 16]",
    "--data.init_args.p", "4",
    "--data.init_args.k", "2",
    "--data.init_args.eval_batch_size", "64",
    "--data.init_args.num_workers", "0",
    "--data.init_args.synthetic.num_train_ids", "10", "--data.init_args.val_ids", "2",
    "--data.init_args.synthetic.num_test_ids", "6",
    "--data.init_args.synthetic.num_distractors", "4",
    "--data.init_args.synthetic.num_junk", "2",
    "--trainer.callbacks+=tests.test_interrupt.SignalAtStep",
]

pytestmark = pytest.mark.slow


class SignalAtStep(Callback):
    """Sends ``signum`` to its own process after training batch ``step`` (-1: never)."""

    def __init__(self, step: int = -1, signum: int = int(signal.SIGTERM)) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    # train.py starts with SIGINT's default disposition whatever the runner's (a process started with
    # SIGINT ignored passes that on, and Python then never raises KeyboardInterrupt)
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()  # train.py prints its last word to stderr
    return lines[-1] if lines else ""


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_epoch_saves_a_checkpoint_and_the_printed_command_resumes(tmp_path, signum, status):
    args = ["fit", "--config", str(CONFIG), *TINY, "--trainer.max_epochs", "2",
            "--trainer.limit_train_batches", "6", "--test_after_fit", "false",
            "--trainer.callbacks.init_args.step", "3", "--trainer.callbacks.init_args.signum", str(int(signum))]
    stopped = run(tmp_path, *args)
    assert stopped.returncode == status, stopped.stderr[-3000:]
    line = last_line(stopped)
    ckpt = tmp_path / "runs" / "cama_synthetic" / "version_0" / "checkpoints" / "last-interrupted.ckpt"
    assert line.endswith(f"--ckpt_path {ckpt.relative_to(tmp_path)}"), line
    # written after the signal: it holds the step the signal came at, mid-epoch (6 steps per epoch)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and state["epoch"] == 0

    if signum != signal.SIGTERM:
        return  # one resume is enough: it does not depend on the signal
    # the printed command resumes and finishes (without signalling again)
    resume = shlex.split(line.split("Resume with: ", 1)[1])[2:]
    resume[resume.index("--trainer.callbacks.init_args.step") + 1] = "-1"
    finished = run(tmp_path, *resume)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Restoring states from the checkpoint path at" in finished.stdout + finished.stderr
    assert str(ckpt.relative_to(tmp_path)) in finished.stdout + finished.stderr
    final = torch.load(tmp_path / "runs" / "cama_synthetic" / "version_0" / "checkpoints" / "last.ckpt",
                       map_location="cpu", weights_only=True)
    assert final["epoch"] == 1
    assert not ckpt.exists()  # a fit that ends normally removes the interrupted checkpoint


def test_validate_without_checkpoint_says_it_scored_untrained_weights(tmp_path):
    plain = run(tmp_path, "validate", "--config", str(CONFIG), *TINY)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert last_line(plain).startswith("WARNING: `validate` scored untrained weights")
    metrics = json.loads(next((tmp_path / "runs").rglob("validate_metrics.json")).read_text())
    assert metrics["weights"] == "untrained"
