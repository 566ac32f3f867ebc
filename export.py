"""Export the embedding model of a checkpoint to ONNX: ``images [B, 3, H, W] -> embedding [B, D]``.

    python export.py --checkpoint runs/cama_synthetic/version_0/checkpoints/last.ckpt --config configs/cama_synthetic.yaml \\
        --output cama.onnx

Works for every task's model (CAMA / IDE+BN, ProtoNet, RetrievalModel): what is exported is the
model's ``forward``, the embedding that ranks or classifies, with a dynamic batch size. The input
size is the checkpoint's data module's ``image_size`` unless ``--image_size`` is given (ONNX fixes
it). With ``onnxruntime`` installed (``pip install -e '.[export]'``) the file is loaded back and
its output compared with PyTorch's on random images; the largest difference is printed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cama.errors import exit_on_input_error
from cama.loading import checkpoint_image_size, load_model, read_config

__all__ = ["export_onnx", "check_onnx", "main"]


def export_onnx(model: nn.Module, image_size: Sequence[int], path: str | Path, opset: int = 17) -> Path:
    """Write ``model``'s ``forward`` (images -> embeddings) to ``path`` with a dynamic batch size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, 3, int(image_size[0]), int(image_size[1]))
    model = model.eval().cpu()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on traced shapes
        torch.onnx.export(
            model, (example,), str(path), input_names=["images"], output_names=["embedding"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=opset, dynamo=False,
        )
    return path


def check_onnx(model: nn.Module, path: str | Path, image_size: Sequence[int], batch: int = 3, seed: int = 0) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's embeddings of random images."""
    import onnxruntime

    images = torch.randn(batch, 3, int(image_size[0]), int(image_size[1]), generator=torch.Generator().manual_seed(seed))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    with torch.no_grad():
        expected = model.eval().cpu()(images)
    return float((exported - expected).abs().max())


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("--config", help="the run's YAML (its model.class_path, for a checkpoint that does not say)")
    parser.add_argument("--model_class", help="LightningModule class path (default: the checkpoint's, else the config's)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--image_size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the checkpoint's)")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    config = read_config(args.config) if args.config else {}
    model: Any = load_model(args.checkpoint, args.model_class, default_class=(config.get("model") or {}).get("class_path"))
    size = tuple(args.image_size) if args.image_size else checkpoint_image_size(args.checkpoint)
    path = export_onnx(model, size, args.output, args.opset)
    try:
        difference = check_onnx(model, path, size)
    except ImportError:
        print(f"export.py: wrote {path} (input [B, 3, {size[0]}, {size[1]}]); onnxruntime not installed, not checked")
    else:
        print(f"export.py: wrote {path} (input [B, 3, {size[0]}, {size[1]}]); ONNX Runtime vs PyTorch: max |diff| {difference:.2e}")
    return path


if __name__ == "__main__":
    with exit_on_input_error("export.py"):
        main()
    sys.exit(0)
