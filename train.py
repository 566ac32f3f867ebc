"""Command line of the project: ``python train.py {fit,validate,test,predict} --config configs/X.yaml``.

A LightningCLI in subclass mode: the YAML names the model class (``cama.models.CAMA``, ...) and the
data module class (``datamodules.ReIDDataModule``, ...). Beyond Lightning's own options:

* ``data.num_classes`` is linked into ``model.init_args.num_classes``;
* ``--test_after_fit true`` (the default) tests the best checkpoint when ``fit`` ends;
* after every command the final metrics are written to ``<log_dir>/<command>_metrics.json``, with
  ``"weights"``: which weights were scored (a checkpoint, ``init_from``, a pretrained backbone, or
  untrained ones -- then the last lines of the output say so);
* a ``fit`` stopped by SIGTERM (a pre-empted cluster job), Ctrl-C or an error after a training
  step saves ``last-interrupted.ckpt`` next to the run's checkpoints
  (:class:`~callbacks.interrupt_checkpoint.InterruptCheckpoint`), exits with a non-zero status
  (143, 130, 1) and says in its last line how to resume;
* every command gets :class:`~callbacks.tensorboard_summary.TensorBoardSummary` (``hp_metric`` = the
  best monitored value, the hyperparameters, a custom-scalars layout);
* ``trainer.default_root_dir`` defaults to ``runs/``: without a logger (``--trainer.logger false``)
  or under ``--trainer.fast_dev_run`` the metrics, the saved config and the callbacks' pictures go
  there, never loose into the working directory;
* every ``fit`` writes its checkpoints into its logger's version folder; ``--ckpt_path last`` resumes
  the run written to last from its newest good checkpoint (:mod:`cama.runs`), and a checkpoint is
  checked against the run (class, model options, tensors) before Lightning reads it;
* :class:`~callbacks.non_finite.NonFiniteGuard` (``--non_finite.*``) stops a diverging fit at its
  step, and :class:`~callbacks.checkpoint_io.SafeCheckpointIO` writes checkpoints atomically and
  never with non-finite weights (``docs/runs.md``);
* bad input (a corrupt or foreign checkpoint, an ``init_from`` of another model, missing ImageNet
  weights, a diverged loss) ends with a one-line ``train.py: error: ...`` and exit status 2
  (:class:`cama.errors.InputError`).

Resume a run with ``--ckpt_path last`` (or a path); fine-tune from another run's weights with
``--model.init_args.init_from PATH``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import traceback
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.checkpoint_io import SafeCheckpointIO
from callbacks.embedding_writer import EmbeddingWriter
from callbacks.interrupt_checkpoint import InterruptCheckpoint
from callbacks.non_finite import NonFiniteGuard
from callbacks.tensorboard_summary import TensorBoardSummary
from cama.checkpoint_files import (
    CheckpointFileError,
    describe_checkpoint,
    read_checkpoint,
)
from cama.errors import exit_on_input_error
from cama.loading import link_data_to_model, read_config, refuse_flat_synthetic_options
from cama.runs import (
    LIGHTNING_CKPT_PATH_VALUES,
    CheckpointMismatchError,
    RunLayout,
    check_state_fits,
    checkpoint_folder,
    checkpoint_to_resume,
    hparam_differences,
    newest_resumable,
    resume_problem,
)

#: exit status of a run stopped by each reason (128 + the signal number for the signals)
EXIT_STATUS = {"SIGTERM": 143, "Ctrl-C": 130, "error": 1}
#: model arguments linked from the data module (not compared with a checkpoint's hyper-parameters)
LINKED_MODEL_ARGS = ("num_classes",)


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
    """The project's LightningCLI; ``interrupt`` is the run's :class:`InterruptCheckpoint` (``run``
    reads what it saved)."""

    def __init__(self, *args, interrupt: InterruptCheckpoint | None = None, **kwargs) -> None:
        self.interrupt = interrupt or InterruptCheckpoint()
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        link_data_to_model(parser)
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, run the test loop on the best checkpoint (by the ModelCheckpoint monitor).",
        )
        parser.add_argument(
            "--validation_grace_s",
            type=float,
            default=60.0,
            help="A SIGTERM during fit's validation waits this long for it to end, so the epoch keeps its score.",
        )
        parser.add_lightning_class_args(NonFiniteGuard, "non_finite")

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
        argv = sys.argv[1:] if args is None else args
        for path in config_files(argv) if isinstance(argv, list) else []:
            if Path(path).is_file():  # (--config also takes a YAML string)
                refuse_flat_synthetic_options(read_config(path), path)  # a clearer line than the parser's
        super().parse_arguments(parser, args)
        command = self.config.get("subcommand")
        if command:
            # before Lightning reads the checkpoint's hyper-parameters into the configuration
            self._choose_checkpoint(command, self.config[command])
            trainer = self.config[command]["trainer"]
            precision = precision_for_device(trainer.get("precision"), trainer.get("accelerator"))
            if precision != trainer.get("precision"):
                _say(
                    f"train.py: precision {trainer.get('precision')} needs a GPU; this run uses {precision} on the CPU"
                )
                trainer["precision"] = precision

    def _choose_checkpoint(self, command: str, config) -> None:
        """Resolve ``--ckpt_path last`` to the newest resumable checkpoint of this run, and check the
        checkpoint against the run: a bad or foreign file stops here, named, before anything is written."""
        ckpt_path = config.get("ckpt_path")
        if (
            not ckpt_path
            or (ckpt_path in LIGHTNING_CKPT_PATH_VALUES and ckpt_path != "last")
            or str(ckpt_path).startswith("registry")
            or "://" in str(ckpt_path)
        ):
            return
        layout = RunLayout.from_trainer_config(config["trainer"])
        model = config.get("model")
        class_path = model.get("class_path") if self.subclass_mode_model and model else None
        option = f"{command} --ckpt_path"
        if ckpt_path == "last":
            if layout is None:
                return  # a logger of unknown layout: Lightning resolves "last" itself
            found, passed = checkpoint_to_resume(layout.folders(), class_path)
            for problem in passed:
                _say(f"train.py: --ckpt_path last passes over {problem}")
            if found is None:
                start = "from scratch" if command == "fit" else "with untrained weights"
                folders = ", ".join(str(f) for f in layout.folders()) or f"{layout.root}/*/checkpoints"
                _say(
                    f"train.py: --ckpt_path last: no resumable checkpoint in {folders}; {command} starts {start}"
                )
                config["ckpt_path"] = None
                return
            ckpt_path = config["ckpt_path"] = str(found)
        else:
            problem = resume_problem(ckpt_path, class_path, option)
            if problem:
                good, _ = newest_resumable([Path(ckpt_path).parent], class_path)
                offer = (
                    f"; the newest good checkpoint beside it is {good}: --ckpt_path {good}" if good else ""
                )
                raise CheckpointFileError(problem + offer)
        checkpoint = read_checkpoint(ckpt_path, option)
        _say(f"train.py: {command} --ckpt_path {ckpt_path} ({describe_checkpoint(checkpoint)})")
        given = model.get("init_args") if model else None
        differences = hparam_differences(
            checkpoint.get("hyper_parameters") or {}, given or {}, LINKED_MODEL_ARGS
        )
        if differences and command == "fit":
            raise CheckpointMismatchError(
                f"{option}: {ckpt_path} was trained with other model options than this run's: "
                f"{'; '.join(differences)}. A resume continues the checkpoint's model and training as they "
                "were (Lightning would use the checkpoint's values): drop these options, or start a new "
                "run from its weights with --model.init_args.init_from PATH"
            )
        if differences:
            _say(
                f"train.py: {command} uses the checkpoint's model options, not this run's: {'; '.join(differences)}"
            )
        version = layout.version_of(ckpt_path) if layout is not None and command == "fit" else None
        if version is not None and layout.version is None:  # the resumed run goes on in its own folder
            logger = config["trainer"]["logger"]
            logger = logger[0] if isinstance(logger, list) else logger
            logger.init_args.version = version

    def before_instantiate_classes(self) -> None:
        config = (
            self.config[self.subcommand] if self.subcommand else self.config
        )  # (run=False: no subcommand)
        self.interrupt.validation_grace_s = float(config["validation_grace_s"])

    def _check_checkpoint_fits(self) -> None:
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path and os.path.isfile(str(ckpt_path)):
            option = f"{self.subcommand} --ckpt_path"
            check_state_fits(read_checkpoint(str(ckpt_path), option), str(ckpt_path), self.model, option)

    def before_fit(self) -> None:
        self._check_checkpoint_fits()
        ckpt_path = self.config["fit"].get("ckpt_path")
        resumed = (
            os.path.dirname(os.path.abspath(ckpt_path)) if ckpt_path and os.path.isfile(ckpt_path) else None
        )
        for folder in sorted({checkpoint_folder(self.trainer, cb) for cb in self.trainer.checkpoint_callbacks}):
            found = sorted(p.name for p in Path(folder).glob("*.ckpt")) if os.path.isdir(folder) else []
            if found and os.path.abspath(folder) != resumed:
                _say(
                    f"train.py: WARNING: this fit writes its checkpoints into {folder}, which holds another run's "
                    f"checkpoints ({', '.join(found[:4])}{' ...' if len(found) > 4 else ''}): they will be "
                    "overwritten or mixed with this run's. Resume that run with --ckpt_path last, or give this "
                    "one its own folder (leave --trainer.logger.init_args.version and ModelCheckpoint's dirpath unset)"
                )

    def before_validate(self) -> None:
        self._check_checkpoint_fits()

    def before_test(self) -> None:
        self._check_checkpoint_fits()

    def before_predict(self) -> None:
        self._check_checkpoint_fits()

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
                "(e.g. runs/<name>/version_<N>/checkpoints/last.ckpt or the best-*.ckpt file) to score a trained model."
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


def config_files(argv: list[str]) -> list[str]:
    """The files named by ``--config`` in ``argv`` (``--config F`` or ``--config=F``).

    >>> config_files(["fit", "--config", "a.yaml", "--config=b.yaml", "--trainer.max_epochs", "2"])
    ['a.yaml', 'b.yaml']
    """
    files = []
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
    return files


def main(args: list[str] | None = None, interrupt: InterruptCheckpoint | None = None) -> CLI:
    interrupt = interrupt or InterruptCheckpoint()
    return CLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "default_root_dir": "runs",
            "callbacks": [interrupt, EmbeddingWriter(), TensorBoardSummary()],
            "plugins": [SafeCheckpointIO()],
        },
        args=args,
        interrupt=interrupt,
    )


def resume_command(argv: list[str], checkpoint: str) -> str:
    """The command that resumes the run of ``argv`` (``train.py fit ...``) from ``checkpoint``: the
    same arguments with ``--ckpt_path checkpoint`` (the run then goes on in that checkpoint's folder)."""
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
    return shlex.join(["python", os.path.basename(argv[0]), *args, "--ckpt_path", checkpoint])


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
        if interrupt.reason is None or (interrupt.reason == "error" and interrupt.saved_path is None):
            raise  # not a fit's stop, or an error with nothing saved: the usual way out
        if interrupt.reason == "error":
            traceback.print_exception(exc)
        status = EXIT_STATUS[interrupt.reason]
    finally:
        # leave the DDP process group before the interpreter exits: gloo's threads torn down at
        # exit can abort the process ("terminate called without an active exception")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if interrupt.saved_path is not None:
        epoch, step = interrupt.position or (0, 0)
        unscored = (
            f" (epoch {interrupt.unscored_epoch}'s validation was cut short: it has no score)"
            if interrupt.unscored_epoch is not None
            else ""
        )
        _say(
            f"Stopped by {interrupt.reason} at epoch {epoch}, step {step}; checkpoint saved to "
            f"{interrupt.saved_path}{unscored}. Resume with: {resume_command(sys.argv, interrupt.saved_path)}"
        )
    elif interrupt.reason is not None and interrupt.resumed_from:
        _say(
            f"Stopped by {interrupt.reason} before this fit took a step: nothing new to save; "
            f"{interrupt.resumed_from} still holds the run. Resume with: "
            f"{resume_command(sys.argv, interrupt.resumed_from)}"
        )
    elif interrupt.reason is not None:
        _say(f"Stopped by {interrupt.reason} before this fit took a step: nothing to resume")
    elif status == EXIT_STATUS["SIGTERM"]:
        _say("Stopped by SIGTERM outside fit: nothing to resume")
    return status


if __name__ == "__main__":
    sys.exit(run())
