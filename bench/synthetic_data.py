"""Speed of the embedded synthetic generators: images per second of one ``render`` call after another.

    python bench/synthetic_data.py [--n 500] [--seed 0]

prints the rate of :class:`datamodules.synthetic.SyntheticReID` (128x64 people) and of
:class:`datamodules.synthetic.SyntheticClasses` (84x84 objects) on the current thread settings.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

from datamodules.synthetic import SyntheticClasses, SyntheticReID  # noqa: E402


def images_per_second(render: Callable[[int], object], n: int = 500, warmup: int = 20) -> float:
    """Images per second of ``render(i)`` for ``i = 0 .. n - 1`` after ``warmup`` calls."""
    for i in range(warmup):
        render(i)
    t0 = time.perf_counter()
    for i in range(n):
        render(i)
    return n / (time.perf_counter() - t0)


def reid_rate(n: int = 500, seed: int = 0) -> float:
    """Images per second of :meth:`SyntheticReID.render` (training images in turn)."""
    gen = SyntheticReID(seed=seed)
    m = len(gen.samples("train"))
    return images_per_second(lambda i: gen.render("train", i % m), n)


def classes_rate(n: int = 500, seed: int = 0) -> float:
    """Images per second of :meth:`SyntheticClasses.render` (every class in turn)."""
    gen = SyntheticClasses(seed=seed)
    c = gen.num_classes
    return images_per_second(lambda i: gen.render(i % c, (i // c) % gen.images_per_class), n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="images timed per generator")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"synthetic re-ID: {reid_rate(args.n, args.seed):.0f} images/s")
    print(f"synthetic classes: {classes_rate(args.n, args.seed):.0f} images/s")


if __name__ == "__main__":
    main()
