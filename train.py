"""Command line of the project: ``python train.py {fit,validate,test,predict} --config configs/X.yaml``.

A LightningCLI in subclass mode: the YAML names the model class (``cama.models.CAMA``, ...) and the
data module class (``datamodules.ReIDDataModule``, ...). Beyond Lightning's own options:

* ``data.num_classes`` is linked into ``model.init_args.num_classes``;
* ``--test_after_fit true`` (the default) tests the best checkpoint when ``fit`` ends;
* after every command the final metrics are written to ``<log_dir>/<command>_metrics.json``, with
  ``"weights"``: which weights were scored (a checkpoint, ``init_from``, a pretrained backbone, or
  untrained ones -- then the last lines of the output say so);
* a ``fit`` stopped by SIGTERM (a pre-empted cluster job), Ctrl-C or an error saves
  ``last-interrupted.ckpt`` next to the run's checkpoints
  (:class:`~callbacks.interrupt_checkpoint.InterruptCheckpoint`), exits with a non-zero status
  (143, 130, 1) and says in its last line how to resume;
* every command gets :class:`~callbacks.tensorboard_summary.TensorBoardSummary` (``hp_metric`` = the
  best monitored value, the hyperparameters, a custom-scalars layout);
* ``trainer.default_root_dir`` defaults to ``runs/``: without a logger (``--trainer.logger false``)
  or under ``--trainer.fast_dev_run`` the metrics, the saved config and the callbacks' pictures go
  there, never loose into the working directory;
* ``--ckpt_path FILE`` is checked before Lightning reads it, and bad input (a corrupt or foreign
  checkpoint, an ``init_from`` of another model, missing ImageNet weights) ends with a one-line
  ``train.py: error: ...`` and exit status 2 (:class:`cama.errors.InputError`).

Resume a run with ``--ckpt_path last`` (or a path); fine-tune from another run's weights with
``--model.init_args.init_from PATH``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import traceback

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.embedding_writer import EmbeddingWriter
from callbacks.interrupt_checkpoint import InterruptCheckpoint
from callbacks.tensorboard_summary import TensorBoardSummary
from cama.errors import exit_on_input_error
from cama.models.checkpoints import check_ckpt_path

#: exit status of a run stopped by each reason (128 + the signal number for the signals)
EXIT_STATUS = {"SIGTERM": 143, "Ctrl-C": 130, "error": 1}


@rank_zero_only
def _say(line: str) -> None:
    """Print ``line`` once (rank zero) to stderr, where Lightning's messages go, after them."""
    print(line, file=sys.stderr, flush=True)


def precision_for_device(precision: str | int | None, accelerator: str | None) -> str | int | None:
    """The precision a run can use: float16 mixed precision (``16-mixed``, ``16``), which the real
    configs ask for on GPUs, becomes ``32-true`` where the run will be on the CPU (Lightning has no
    float16 autocast there); every other value is kept."""
    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    if on_cpu and str(precision) in ("16-mixed", "16"):
        return "32-true"
    return precision


class CLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, run the test loop on the best checkpoint (by the ModelCheckpoint monitor).",
        )

    def scored_weights(self) -> str:
        """Which weights the last command ran on: the checkpoint it loaded, else the model's
        ``init_from`` (applied by ``fit``) or ``pretrained`` hyperparameters, else ``"untrained"``."""
        if self.trainer.ckpt_path:
            return f"checkpoint {self.trainer.ckpt_path}"
        hparams = getattr(self.model, "hparams", {})
        if self.subcommand == "fit" and hparams.get("init_from"):
            return f"trained from init_from {hparams['init_from']}"
        if self.subcommand == "fit":
            return "trained in this run"
        if hparams.get("pretrained"):
            return f"pretrained backbone ({hparams['pretrained']}), other layers untrained"
        return "untrained"

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # before Lightning reads the checkpoint's hyper-parameters: a bad file stops here, named
        command = self.config.get("subcommand")
        if command:
            check_ckpt_path(self.config[command].get("ckpt_path"), command)
            trainer = self.config[command]["trainer"]
            precision = precision_for_device(trainer.get("precision"), trainer.get("accelerator"))
            if precision != trainer.get("precision"):
                _say(f"train.py: precision {trainer.get('precision')} needs a GPU; this run uses {precision} on the CPU")
                trainer["precision"] = precision

    def _write_metrics(self, command: str) -> None:
        metrics: dict[str, float | str] = {
            k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1
        }
        metrics["weights"] = self.scored_weights()
        # trainer.log_dir broadcasts from rank zero: every rank must ask for it.
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        self._dump(command, metrics, log_dir)

    @rank_zero_only
    def _dump(self, command: str, metrics: dict[str, float | str], log_dir: str) -> None:
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, f"{command}_metrics.json")
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
        rank_zero_info(f"{command} metrics written to {path}")

    def _warn_if_untrained(self, command: str) -> None:
        weights = self.scored_weights()
        if weights == "untrained" or weights.startswith("pretrained backbone"):
            _say(
                f"WARNING: `{command}` scored {weights} weights: no --ckpt_path was given, so these numbers "
                "describe a network that was never trained here. Pass --ckpt_path PATH "
                "(e.g. runs/<name>/checkpoints/last.ckpt or the best-*.ckpt file) to score a trained model."
            )

    def after_fit(self) -> None:
        self._write_metrics("fit")
        if self.config[self.subcommand].get("test_after_fit", False) and self.trainer.checkpoint_callback:
            has_best = bool(getattr(self.trainer.checkpoint_callback, "best_model_path", ""))
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if has_best else None)
            self._write_metrics("test")

    def after_validate(self) -> None:
        self._write_metrics("validate")
        self._warn_if_untrained("validate")

    def after_test(self) -> None:
        self._write_metrics("test")
        self._warn_if_untrained("test")

    def after_predict(self) -> None:
        self._warn_if_untrained("predict")


def main(args: list[str] | None = None, interrupt: InterruptCheckpoint | None = None) -> CLI:
    return CLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "default_root_dir": "runs",
            "callbacks": [interrupt or InterruptCheckpoint(), EmbeddingWriter(), TensorBoardSummary()],
        },
        args=args,
    )


def resume_command(argv: list[str]) -> str:
    """The command that resumes the run of ``argv`` (``train.py fit ...``) from its last checkpoint."""
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if not arg.startswith("--ckpt_path="):
            args.append(arg)
    return shlex.join(["python", os.path.basename(argv[0]), *args, "--ckpt_path", "last"])


def run() -> int:
    """``main`` on ``sys.argv`` with the exit status and the last line of a run stopped by a signal
    or an error."""
    interrupt = InterruptCheckpoint()
    try:
        with exit_on_input_error("train.py"):
            main(None, interrupt)
        status = 0
    except SIGTERMException:  # a SystemExit whose status would be 0
        status = EXIT_STATUS["SIGTERM"]
    except BaseException as exc:  # noqa: BLE001 - every way out of a fit is reported below
        if interrupt.saved_path is None:
            raise  # not a fit, or nothing was saved (e.g. a configuration error): the usual way out
        if interrupt.reason == "error":
            traceback.print_exception(exc)
        status = EXIT_STATUS[interrupt.reason or "error"]
    finally:
        # leave the DDP process group before the interpreter exits: gloo's threads torn down at
        # exit can abort the process ("terminate called without an active exception")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if interrupt.saved_path is not None:
        epoch, step = interrupt.position or (0, 0)
        _say(
            f"Stopped by {interrupt.reason} at epoch {epoch}, step {step}; checkpoint saved to "
            f"{interrupt.saved_path}. Resume with: {resume_command(sys.argv)}"
        )
    elif status == EXIT_STATUS["SIGTERM"]:
        _say("Stopped by SIGTERM outside fit: nothing to resume")
    return status


if __name__ == "__main__":
    sys.exit(run())
