"""Loading a checkpoint's matching weights into a fresh model (fine-tuning)."""

from __future__ import annotations

import os

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

__all__ = ["load_matching_weights"]


def load_matching_weights(model: nn.Module, path: str) -> dict[str, list[str]]:
    """Copy every tensor of the checkpoint at ``path`` whose name and shape match into ``model``.

    ``path`` may hold a Lightning checkpoint (its ``state_dict``) or a plain state dict. Tensors of
    the model with a different shape in the checkpoint (a classifier for another number of
    identities) and tensors the checkpoint lacks keep the model's fresh initialisation; both lists
    are logged and returned as ``{"loaded", "skipped_shape", "missing", "unexpected"}``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"init_from checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds neither a Lightning checkpoint nor a state dict")
    own = model.state_dict()
    loadable, skipped = {}, []
    for name, tensor in state.items():
        if name not in own:
            continue
        if own[name].shape != tensor.shape:
            skipped.append(f"{name} {tuple(tensor.shape)} -> {tuple(own[name].shape)}")
        else:
            loadable[name] = tensor
    model.load_state_dict(loadable, strict=False)
    report = {
        "loaded": sorted(loadable),
        "skipped_shape": skipped,
        "missing": sorted(set(own) - set(state)),
        "unexpected": sorted(set(state) - set(own)),
    }
    rank_zero_info(
        f"init_from {path}: loaded {len(loadable)}/{len(own)} tensors; "
        f"re-initialised (shape differs): {skipped or 'none'}; "
        f"not in checkpoint: {report['missing'] or 'none'}"
    )
    return report
