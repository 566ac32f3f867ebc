"""Cost of the explanation maps on a ResNet-50 at 256x128, batch 32 (the re-ID setting).

Prints the forward time of the network, the time of ``dist_cam``, ``ram`` and ``fam`` on its last
feature maps ``[32, 2048, 8, 4]``, and of ``gradient_cam``, against the targets:

* the three forward-only maps together cost under 5% of the forward pass;
* ``gradient_cam`` costs no more than 1.2 times one plain forward + backward of the batch.

Usage::

    .venv/bin/python bench/explain.py [--batch 32] [--reps 3] [--threads N] [--extra]

``torchvision.models.resnet50(weights=None)``: no weights are downloaded. The steps run
interleaved (one round = every step once, the forward-only maps ``--map-reps`` times after each
network step), the first round is a warm-up, and the figures are medians over ``--reps`` rounds,
in wall time and in CPU time of this process (``time.process_time``, less sensitive to other
processes on a shared machine). The load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from cama.explain import dist_cam, fam, gradient_cam, ram, similarity_score  # noqa: E402


class Timer:
    """Wall and CPU (process) time of named steps, run interleaved so that a load from other
    processes hits every step alike; figures are medians over the repetitions."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def run(self, name: str, fn: Callable[[], object], record: bool = True) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if record:
            self.wall.setdefault(name, []).append(time.perf_counter() - wall)
            self.cpu.setdefault(name, []).append(time.process_time() - cpu)

    def median(self, name: str, cpu: bool = False) -> float:
        return statistics.median((self.cpu if cpu else self.wall)[name])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--supports", type=int, default=5, help="N supports per class for FAM")
    parser.add_argument("--reps", type=int, default=3, help="timed runs of the network-sized steps")
    parser.add_argument("--map-reps", type=int, default=50, help="timed runs of the forward-only maps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--extra", action="store_true", help="also time layerized / truncated / other methods"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    backbone = nn.Sequential(*list(model.children())[:-2])  # up to layer4: the maps pooled into the embedding
    images = torch.randn(args.batch, 3, args.height, args.width)

    def forward() -> None:
        with torch.inference_mode():
            model(images)

    with torch.inference_mode():
        maps = backbone(images)  # [B, 2048, h, w]
        embeddings = model(images)
    reference_maps = maps.roll(1, dims=0)  # "gallery" side: another sample of the batch
    reference_vectors = reference_maps.mean(dim=(2, 3))
    query_vectors = maps.mean(dim=(2, 3))
    supports = reference_vectors[:, None] + 0.1 * torch.randn(args.batch, args.supports, maps.shape[1])
    reference_embeddings = embeddings.roll(1, dims=0)
    score_fn = similarity_score(reference_embeddings)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        score_fn(model(images)).sum().backward()

    def explain(**kwargs: object) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():  # as in a validation loop
                return gradient_cam(model, images, score_fn, **kwargs)

        return run

    maps_steps = {
        "dist_cam": lambda: dist_cam(maps, reference_vectors),
        "ram": lambda: ram(query_vectors, reference_maps),
        "fam": lambda: fam(maps, supports),
    }
    stages = ["layer1", "layer2", "layer3", "layer4"]
    main_step = ("gradient_cam gradcam layer4", explain(layers=["layer4"], method="gradcam"))
    extra_steps = [
        ("gradient_cam gradcam++ layer4", explain(layers=["layer4"], method="gradcam++")),
        ("gradient_cam layercam layer1-4", explain(layers=stages, method="layercam")),
        (
            "gradient_cam gradcam layer1-4, delta=20",
            explain(layers=stages, method="gradcam", truncation=20.0),
        ),
        ("gradient_cam fullgrad layer4 (+input)", explain(layers=["layer4"], method="fullgrad")),
    ] if args.extra else []
    network_steps = [("forward", forward), ("forward + backward", forward_backward), main_step, *extra_steps]

    timer = Timer()
    for rep in range(args.reps + 1):  # the first round is a warm-up
        for name, fn in network_steps:
            timer.run(name, fn, record=rep > 0)
            model.zero_grad(set_to_none=True)
            with torch.inference_mode():
                for _ in range(args.map_reps if rep > 0 else 3):
                    for map_name, map_fn in maps_steps.items():
                        timer.run(map_name, map_fn, record=rep > 0)

    load = os.getloadavg()
    print(
        f"ResNet-50, batch {args.batch}, {args.height}x{args.width}, feature maps {tuple(maps.shape)}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.reps} interleaved rounds; "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores"
    )
    rows = []
    for cpu in (False, True):
        forward_time, backward_time = timer.median("forward", cpu), timer.median("forward + backward", cpu)
        clock = "cpu" if cpu else "wall"
        rows.append((f"[{clock}] forward (inference mode)", forward_time, "", ""))
        rows.append((f"[{clock}] forward + backward (param grads)", backward_time, "", ""))
        three = 0.0
        for name in maps_steps:
            t = timer.median(name, cpu)
            three += t
            label = f"fam (N={args.supports})" if name == "fam" else name
            rows.append((f"[{clock}] {label}", t, f"{t / forward_time:7.3%} of fwd", ""))
        verdict = "ok" if three < 0.05 * forward_time else "MISSED"
        share = f"{three / forward_time:7.3%} of fwd"
        rows.append((f"[{clock}] dist_cam + ram + fam", three, share, f"< 5%: {verdict}"))
        for index, (name, _) in enumerate([main_step, *extra_steps]):
            t = timer.median(name, cpu)
            verdict = "ok" if t <= 1.2 * backward_time else "MISSED"
            target = f"<= 1.2x: {verdict}" if index == 0 else "(info)"
            rows.append((f"[{clock}] {name}", t, f"{t / backward_time:6.2f}x fwd+bwd", target))
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'time':>11}  {'ratio':>18}  target")
    for name, seconds, ratio, target in rows:
        shown = f"{seconds * 1e3:9.3f} ms" if seconds < 1 else f"{seconds:9.3f} s "
        print(f"{name:<{width}}  {shown:>11}  {ratio:>18}  {target}")


if __name__ == "__main__":
    main()
