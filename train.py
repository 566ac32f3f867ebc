"""Command line of the project: ``python train.py {fit,validate,test,predict} --config configs/X.yaml``.

A LightningCLI in subclass mode: the YAML names the model class (``cama.models.CAMA``, ...) and the
data module class (``datamodules.ReIDDataModule``, ...). Beyond Lightning's own options:

* ``data.num_classes`` is linked into ``model.init_args.num_classes``;
* ``--test_after_fit true`` (the default) tests the best checkpoint when ``fit`` ends;
* after every command the final metrics are written to ``<log_dir>/<command>_metrics.json``;
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

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from cama.errors import exit_on_input_error
from cama.models.checkpoints import check_ckpt_path


class CLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, run the test loop on the best checkpoint (by the ModelCheckpoint monitor).",
        )

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # before Lightning reads the checkpoint's hyper-parameters: a bad file stops here, named
        command = self.config.get("subcommand")
        if command:
            check_ckpt_path(self.config[command].get("ckpt_path"), command)

    def _write_metrics(self, command: str) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        # trainer.log_dir broadcasts from rank zero: every rank must ask for it.
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        self._dump(command, metrics, log_dir)

    @rank_zero_only
    def _dump(self, command: str, metrics: dict[str, float], log_dir: str) -> None:
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, f"{command}_metrics.json")
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
        rank_zero_info(f"{command} metrics written to {path}")

    def after_fit(self) -> None:
        self._write_metrics("fit")
        if self.config[self.subcommand].get("test_after_fit", False) and self.trainer.checkpoint_callback:
            has_best = bool(getattr(self.trainer.checkpoint_callback, "best_model_path", ""))
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if has_best else None)
            self._write_metrics("test")

    def after_validate(self) -> None:
        self._write_metrics("validate")

    def after_test(self) -> None:
        self._write_metrics("test")


def main(args: list[str] | None = None) -> CLI:
    return CLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"default_root_dir": "runs"},
        args=args,
    )


if __name__ == "__main__":
    try:
        with exit_on_input_error("train.py"):
            main()
    finally:
        # leave the DDP process group before the interpreter exits: gloo's threads torn down at
        # exit can abort the process ("terminate called without an active exception")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
