"""End-to-end runs of ``train.py`` on a tiny synthetic configuration (subprocesses, CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cama_synthetic.yaml"
TINY = [
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.limit_train_batches", "3",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--model.init_args.backbone", "resnet10",
    "--model.init_args.lr_step", "1",
    "--data.init_args.image_size", "[64, 32]",
    "--data.init_args.p", "4",
    "--data.init_args.k", "2",
    "--data.init_args.eval_batch_size", "32",
    "--data.init_args.num_workers", "0",
    "--data.init_args.synthetic.num_train_ids", "10", "--data.init_args.val_ids", "2",
    "--data.init_args.synthetic.num_test_ids", "8",
    "--data.init_args.synthetic.num_distractors", "6",
    "--data.init_args.synthetic.num_junk", "4",
]

pytestmark = pytest.mark.slow


def run_cli(workdir: Path, *args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [*(launcher or (sys.executable,)), str(REPO / "train.py"), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"train.py {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def read_metrics(workdir: Path, command: str) -> dict[str, float]:
    files = sorted((workdir / "runs").rglob(f"{command}_metrics.json"), key=os.path.getmtime)
    assert files, f"no {command}_metrics.json under {workdir / 'runs'}"
    return json.loads(files[-1].read_text())


def fit(workdir: Path, epochs: int, *extra: str) -> dict[str, float]:
    run_cli(workdir, "fit", "--config", str(CONFIG), *TINY, "--trainer.max_epochs", str(epochs),
            "--test_after_fit", "false", *extra)
    return read_metrics(workdir, "fit")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, fit(workdir, 2)


def test_fit_logs_ranking_metrics_and_checkpoints(uninterrupted):
    workdir, metrics = uninterrupted
    for key in ("Val/mAP", "Val/rank1", "val/rank5", "val/rank10", "val/mAP_branches_1", "train/loss"):
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
    # a query's AP is the mean precision at its matches, at least the precision at its last match (INP)
    # and at least 1/rank of its first match: mINP <= mAP, and CMC never falls with the list length
    assert metrics["Val/mINP"] <= metrics["Val/mAP"] + 1e-6
    assert metrics["Val/rank1"] <= metrics["val/rank5"] <= metrics["val/rank10"]
    checkpoints = workdir / "runs" / "cama_synthetic" / "version_0" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert any(p.name.startswith("best-epoch") for p in checkpoints.iterdir())
    events = list((workdir / "runs" / "cama_synthetic").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard is the default logger"


def test_resume_from_last_matches_uninterrupted_run(uninterrupted, tmp_path):
    _, expected = uninterrupted
    fit(tmp_path, 1)
    resumed = fit(tmp_path, 2, "--ckpt_path", "last")
    for key in ("Val/mAP", "Val/rank1", "train/loss", "val/mAP_branches_1"):
        assert resumed[key] == pytest.approx(expected[key], abs=1e-5), key
    ckpt = torch.load(tmp_path / "runs" / "cama_synthetic" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * 3 and ckpt["lr_schedulers"][0]["last_epoch"] == 2
    assert ckpt["optimizer_states"][0]["state"], "optimizer state is restored and saved again"


def test_validate_same_metrics_with_one_process_lightning_ddp_and_torchrun(uninterrupted, tmp_path):
    workdir, _ = uninterrupted
    ckpt = str(workdir / "runs" / "cama_synthetic" / "version_0" / "checkpoints" / "last.ckpt")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    results = {}
    for name, devices, strategy, launcher in (
        ("one", 1, "auto", ()), ("lightning", 2, "ddp", ()), ("torchrun", 2, "ddp", torchrun)
    ):
        run_dir = tmp_path / name
        run_dir.mkdir()
        run_cli(run_dir, "validate", "--config", str(CONFIG), *TINY, "--ckpt_path", ckpt, "--trainer.accelerator",
                "cpu", "--trainer.devices", str(devices), "--trainer.strategy", strategy, launcher=launcher)
        results[name] = read_metrics(run_dir, "validate")
    for key in ("Val/mAP", "Val/mINP", "Val/rank1", "val/rank5", "val/mAP_branches_1"):
        for name in ("lightning", "torchrun"):
            assert results[name][key] == pytest.approx(results["one"][key], abs=1e-6), (name, key)
    # predict under torchrun: the two processes' shares of the test split merged into one file that
    # scores like the test (validation ranks the held-out training identities, the test the test split)
    run_dir = tmp_path / "test"
    run_dir.mkdir()
    run_cli(run_dir, "test", "--config", str(CONFIG), *TINY, "--ckpt_path", ckpt, "--trainer.accelerator", "cpu")
    tested = read_metrics(run_dir, "test")
    assert tested["test/mAP"] != pytest.approx(results["one"]["Val/mAP"], abs=1e-6)  # two different splits
    run_dir = tmp_path / "predict"
    run_dir.mkdir()
    run_cli(run_dir, "predict", "--config", str(CONFIG), *TINY, "--ckpt_path", ckpt, "--trainer.accelerator",
            "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp", launcher=torchrun)
    from evaluate import evaluate_file

    scored = evaluate_file(next((run_dir / "runs").rglob("predictions.pt")))
    for key in ("mAP", "mINP", "rank1", "rank5"):
        assert scored[key] == pytest.approx(tested[f"test/{key}"], abs=1e-6), key


def test_fine_tune_from_checkpoint_with_other_number_of_identities(uninterrupted, tmp_path):
    workdir, _ = uninterrupted
    ckpt = workdir / "runs" / "cama_synthetic" / "version_0" / "checkpoints" / "last.ckpt"
    result = run_cli(tmp_path, "fit", "--config", str(CONFIG), *TINY, "--trainer.max_epochs", "1",
                     "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                     "--test_after_fit", "false",
                     "--data.init_args.synthetic.num_train_ids", "12", "--data.init_args.val_ids", "2",
                     "--model.init_args.init_from", str(ckpt))
    log = result.stdout + result.stderr
    # 8 training identities -> 10 (2 of 10 and of 12 held out for validation); the embedding width stays
    assert "init_from" in log and re.search(r"heads\.0\.classifier\.weight \(8, (\d+)\) -> \(10, \1\)", log)


def test_print_config_lists_model_and_data_options(tmp_path):
    result = run_cli(tmp_path, "fit", "--config", str(CONFIG), "--print_config")
    for option in ("class_path: cama.models.CAMA", "oap_topk", "class_path: datamodules.ReIDDataModule", "num_branches"):
        assert option in result.stdout


def test_fit_with_two_cpu_processes_then_tests_best_checkpoint(tmp_path):
    run_cli(tmp_path, "fit", "--config", str(CONFIG), *TINY, "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.accelerator", "cpu",
            "--trainer.devices", "2", "--trainer.strategy", "ddp")
    tested = read_metrics(tmp_path, "test")
    assert tested["test/mINP"] <= tested["test/mAP"] + 1e-6
    assert tested["test/rank1"] <= tested["test/rank5"] <= tested["test/rank10"]


def test_float16_mixed_precision_falls_back_to_float32_on_the_cpu_only():
    from train import precision_for_device

    assert precision_for_device("16-mixed", "cpu") == "32-true"
    assert precision_for_device("16", "cpu") == "32-true"
    assert precision_for_device("16-mixed", "gpu") == "16-mixed"
    assert precision_for_device("bf16-mixed", "cpu") == "bf16-mixed"  # Lightning autocasts bf16 on CPUs
    assert precision_for_device(None, "cpu") is None
    expected = "16-mixed" if torch.cuda.is_available() else "32-true"
    assert precision_for_device("16-mixed", "auto") == expected
