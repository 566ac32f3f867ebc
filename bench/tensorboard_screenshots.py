"""What a researcher sees in TensorBoard: screenshots of a run's default view, and which cards it shows.

``python bench/tensorboard_screenshots.py RUN_DIR OUT_DIR [--name after] [--expect Val/mAP ...]``

Starts TensorBoard on ``127.0.0.1`` (a free port) on ``RUN_DIR``, opens it in headless Chromium (a
1600 x 900 window by default: no tab, no query string, so TensorBoard's default tab -- Time Series --
with its default settings), and writes into ``OUT_DIR``:

* ``<name>_scalars.png``: the first viewport, what is seen without scrolling;
* ``<name>_scalars_full.png``: the whole page;
* ``<name>_scalars_smoothing0.png``: the first viewport of ``/?smoothing=0#timeseries`` (the link
  the README gives: the raw values, not TensorBoard's default exponential smoothing of 0.6);
* ``<name>_images.png``: the Time Series tab filtered to the image cards;
* ``<name>_custom_scalars.png``, ``<name>_hparams.png``: the CUSTOM SCALARS and HPARAMS tabs;
* ``<name>_cards.json``: every card title and group, where it is, and whether it is in the first
  viewport (its title and the top of its chart visible).

It prints the card titles of the first viewport and exits with status 1 when a tag given with
``--expect`` is not among them (the headline metrics must be reachable with no scrolling or paging).

Needs Playwright (``pip install -e .[browser]``) and a Chromium binary (Debian: ``apt-get install
chromium``); no browser download. Chromium starts with an empty profile and without background
networking, so it runs with no network.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# title, group, position of every card of the page (Time Series' own elements)
CARDS_SCRIPT = """() => [...document.querySelectorAll('card-view')].map(card => {
  const title = card.querySelector('tb-truncated-path');
  const group = card.closest('metrics-card-groups-component, .card-group');
  const header = group && group.querySelector('.group-title');
  const box = card.getBoundingClientRect();
  return {title: title ? title.innerText.replace(/\\n/g, '') : '',
          group: header ? header.innerText : '',
          top: box.top, bottom: box.bottom, left: box.left, height: box.height};
})"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_tensorboard(logdir: Path, port: int, timeout: float = 120.0) -> subprocess.Popen:
    """TensorBoard on ``127.0.0.1:port``, once it answers."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
               "--port", str(port), "--reload_interval", "0"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"tensorboard exited with status {server.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError(f"tensorboard did not answer on port {port} within {timeout:.0f} s")


def in_first_viewport(card: dict, height: int) -> bool:
    """The card's title and the top of its chart are on screen without scrolling."""
    return card["top"] >= 0 and card["top"] + 100 <= height


def screenshots(run_dir: Path, out_dir: Path, name: str, width: int, height: int, chromium: str,
                settle_ms: int) -> list[dict]:
    from playwright.sync_api import sync_playwright  # the optional `browser` extra

    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_tensorboard(run_dir, port)
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True, args=list(CHROMIUM_FLAGS),
                viewport={"width": width, "height": height},
            )
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("card-view", timeout=60_000)
            page.wait_for_timeout(settle_ms)  # the charts draw after their data arrives
            page.screenshot(path=str(out_dir / f"{name}_scalars.png"))
            page.screenshot(path=str(out_dir / f"{name}_scalars_full.png"), full_page=True)
            cards = page.evaluate(CARDS_SCRIPT)
            for card in cards:
                card["first_viewport"] = in_first_viewport(card, height)
            page.goto(f"http://127.0.0.1:{port}/?smoothing=0#timeseries")  # the link the README gives
            page.wait_for_selector("card-view", timeout=60_000)
            page.wait_for_timeout(settle_ms)
            page.screenshot(path=str(out_dir / f"{name}_scalars_smoothing0.png"))
            page.goto(f"http://127.0.0.1:{port}/?tagFilter=explanations#timeseries")
            page.wait_for_timeout(settle_ms)
            page.screenshot(path=str(out_dir / f"{name}_images.png"))
            for tab in ("custom_scalars", "hparams"):  # their own dashboards, at their defaults
                page.goto(f"http://127.0.0.1:{port}/#{tab}")
                page.wait_for_timeout(settle_ms)
                page.screenshot(path=str(out_dir / f"{name}_{tab}.png"))
            context.close()
    finally:
        server.terminate()
        server.wait()
    (out_dir / f"{name}_cards.json").write_text(json.dumps(cards, indent=1))
    return cards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the TensorBoard log dir (e.g. runs/cama_synthetic)")
    parser.add_argument("out_dir", type=Path, help="where the PNGs and the card list go")
    parser.add_argument("--name", default="after", help="file name prefix (before, after, ...)")
    parser.add_argument("--expect", nargs="*", default=[], help="tags that must be in the first viewport")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--settle_ms", type=int, default=6000, help="wait for the charts to draw")
    args = parser.parse_args(argv)
    cards = screenshots(args.run_dir, args.out_dir, args.name, args.width, args.height, args.chromium,
                        args.settle_ms)
    seen = [c["title"] for c in cards if c["first_viewport"]]
    print(f"first viewport ({args.width}x{args.height}): {seen}")
    groups = list(dict.fromkeys(c["group"] for c in cards))
    print(f"expanded groups, in order: {groups}")
    missing = [tag for tag in args.expect if tag not in seen]
    if missing:
        print(f"NOT in the first viewport: {missing}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
