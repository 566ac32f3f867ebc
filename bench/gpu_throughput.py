"""Training throughput on an accelerator: CAMA ResNet-50 (3 branches) and CAMA on a ViT-S at 256x128.

    python bench/gpu_throughput.py [--device cuda] [--batch 128] [--steps 20]
        [--precisions bf16-mixed 16-mixed] [--data-root DIR --workers 8 --loop-steps 200]

For each model and precision (autocast to bfloat16, or float16 with a gradient scaler; the CNN in the
channels-last memory format), printed in one table:

* **bare step**: images/s of ``compute_losses`` + backward + optimizer step on one batch held on the
  device (no data loading), the best of ``--steps`` timed steps after three warm-up steps;
* **with the data pipeline** (``--data-root``): a Market-1501-sized tree in its real layout, written
  once by the generator at 256x128 (``bench/real_scale_trees.py``), read by the project's
  ``ReIDDataModule`` (JPEG decoding, crop, flip and normalisation in ``--workers`` processes) for
  ``--loop-steps`` batches of P x K = ``--batch`` images: images/s of the whole loop and the share of it
  spent waiting for data (between one step's end and the next batch's arrival).

The aim for CAMA is 10,000 images/s with the data pipeline included (60 Market-1501 epochs of 12,936
images in about two minutes). The host's 2048x2048 float32 matmul GFLOP/s is printed with it. On a
CPU (``--device cpu``) it runs the same flows, slowly: a rehearsal of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from cama.backbones import TransformerOptions  # noqa: E402
from cama.models import CAMA  # noqa: E402
from train_throughput import matmul_gflops  # noqa: E402

MARKET_IDS = 751
MODELS = {
    "cama_resnet50_3br": dict(backbone="resnet50", num_branches=3, channels_last=True),
    "cama_vit_s_3br": dict(backbone="vit_small_patch16_224", num_branches=3,
                           transformer=TransformerOptions(image_size=(256, 128), pool="token")),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _model(name: str, device: str) -> CAMA:
    torch.manual_seed(0)
    model = CAMA(num_classes=MARKET_IDS, pretrained=None, **MODELS[name]).to(device)
    if MODELS[name].get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model.train()


class Stepper:
    """One optimizer step of CAMA's losses at a precision (``bf16-mixed``, ``16-mixed``, ``32-true``)."""

    def __init__(self, model: CAMA, device: str, precision: str) -> None:
        self.model, self.device, self.precision = model, device, precision
        self.optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4)
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        kind = "cuda" if device.startswith("cuda") else "cpu"
        self.autocast = torch.autocast(kind, dtype=dtype) if dtype else contextlib.nullcontext()
        self.scaler = torch.amp.GradScaler(kind, enabled=precision == "16-mixed")

    def __call__(self, images: torch.Tensor, pids: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.model.compute_losses(images, pids)["loss"]
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def bare_step(name: str, device: str, precision: str, batch: int, steps: int) -> float:
    model = _model(name, device)
    images = torch.randn(batch, 3, 256, 128, device=device)
    if MODELS[name].get("channels_last"):
        images = images.contiguous(memory_format=torch.channels_last)
    pids = torch.arange(batch, device=device) // 4 % MARKET_IDS
    step = Stepper(model, device, precision)
    for _ in range(3):
        step(images, pids)
    best = float("inf")
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step(images, pids)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return batch / best


def data_loop(name: str, device: str, precision: str, batch: int, data_root: str, workers: int,
              steps: int, scale: str = "real") -> tuple[float, float]:
    """``(images/s, data-wait share)`` over ``steps`` batches from the Market-1501-sized tree."""
    from real_scale_trees import ensure_tree

    from datamodules import ReIDDataModule

    tree = ensure_tree(data_root, "market1501", scale, workers=workers, size=(256, 128))
    data = ReIDDataModule(dataset="market1501", root=str(tree.path), image_size=(256, 128), p=batch // 4, k=4,
                          num_workers=workers, check_images=False)
    data.setup("fit")
    loader = data.train_dataloader()
    model = _model(name, device)
    step = Stepper(model, device, precision)
    wait = 0.0
    done = 0
    start = last = time.perf_counter()
    while done < steps:
        for item in loader:
            arrived = time.perf_counter()
            images = item["image"].to(device, non_blocking=True)
            if MODELS[name].get("channels_last"):
                images = images.contiguous(memory_format=torch.channels_last)
            step(images, item["pid"].to(device, non_blocking=True))
            _sync(device)
            done += 1
            wait += arrived - last
            last = time.perf_counter()
            if done >= steps:
                break
    total = time.perf_counter() - start
    return done * batch / total, wait / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=["bf16-mixed", "16-mixed"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-root", default=None, help="where the Market-1501-sized tree is (written once)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--loop-steps", type=int, default=200)
    parser.add_argument("--scale", default="real", help="of the tree: 'real' or a fraction (a rehearsal)")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name()}")
    print(f"2048x2048 float32 matmul on {args.device}: {matmul_gflops(device=args.device):.0f} GFLOP/s")
    print("| model | precision | bare step images/s | with data: images/s | data wait |")
    print("|---|---|---|---|---|")
    for name in args.models:
        for precision in args.precisions:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bare = bare_step(name, args.device, precision, args.batch, args.steps)
                loop: Any = ("-", "-")
                if args.data_root:
                    rate, share = data_loop(name, args.device, precision, args.batch, args.data_root,
                                            args.workers, args.loop_steps, args.scale)
                    loop = (f"{rate:,.0f}", f"{100 * share:.0f}%")
            print(f"| {name} | {precision} | {bare:,.0f} | {loop[0]} | {loop[1]} |", flush=True)


if __name__ == "__main__":
    main()
