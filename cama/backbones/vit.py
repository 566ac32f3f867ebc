"""Vision-transformer backbones from timm, with their patch tokens as feature maps ``[B, K, h, w]``.

A ViT (Dosovitskiy et al., ICLR 2021) cuts an image into ``h x w`` patches and turns each into a
token; after the blocks, the patch tokens *are* a feature map: token ``(y, x)`` is the ``K``-vector of
grid cell ``(y, x)``. :class:`TokenGrid` folds them back into ``[B, K, h, w]`` (dropping the class /
register tokens), so every map of :mod:`cama.explain` and every callback reads a ViT like a CNN.

The embedding is pooled from that grid, in one of two ways (``TransformerOptions.pool``):

* ``"mean"``: the grid as it is; the embedding is the mean of the patch tokens, and RAM, Dist-CAM and
  FAM decompose it exactly, as for a CNN's global average pool.
* ``"token"``: the class token, the usual ViT choice (TransReID, CLIP-ReID). The grid is the patch
  tokens shifted by one vector, ``F(y, x) = P(y, x) + (c - mean P)``, so that its mean is the class
  token ``c``: the maps still sum to the similarity, but the class token's difference from the patch
  mean is spread evenly over the grid; the part of a map that varies over the image is the patch
  tokens' (``docs/explanations.md#transformer-backbones`` measures how much of the similarity that is).

CAMA on a ViT (cama-ram Sec. 4.2 copies ResNet's conv5 per branch): the last ``branch_depth`` blocks
(and, for the class token, the final LayerNorm) are copied per branch, the earlier blocks are shared.
The mean of the patch tokens is taken before the final LayerNorm, as timm's own average pooling does.

Weights never download here: ``pretrained`` is ``None`` (random init), ``"imagenet"`` (timm's default
weights of the name, read from ``<torch hub dir>/checkpoints/timm/<name>.safetensors`` or from the
Hugging Face cache) or a path to a weights file; the position embeddings are resampled to the image size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cama.backbones.resnet import PretrainedWeightsNotFound

__all__ = [
    "TransformerOptions", "TokenGrid", "TokenEmbedding", "MultiBranchViT", "ViTBody", "is_transformer",
    "build_vit", "timm_weights_path",
]


@dataclass(frozen=True)
class TransformerOptions:
    """How a timm transformer is built and pooled (``backbone: <timm name>`` in a model's config).

    Attributes:
        image_size: ``(H, W)`` the position embeddings are made for (other sizes are resampled on the fly).
        pool: ``"mean"`` (mean of the patch tokens: the maps decompose the embedding exactly) or
            ``"token"`` (the class token; see the module docstring).
        branch_depth: blocks copied per branch (CAMA's branches; the others are shared).
        patch_size, embed_dim, depth, num_heads: override the named model's (a small ViT trained from
            scratch); pretrained weights then no longer fit.
        drop_path_rate: stochastic depth of the blocks (0: none).
        conv_stem: 0 keeps the patch projection (one ``p x p`` convolution of stride ``p``); ``n >= 1``
            replaces it by ``log2(p)`` stages of ``n`` 3x3 convolutions with BatchNorm and ReLU (the first
            of each of stride 2), then a 1x1 convolution: the same token grid from a convolutional stem
            (``n = 1``: Xiao et al., "Early Convolutions Help Transformers See Better", NeurIPS 2021;
            ``n > 1``: a hybrid in the sense of the ViT paper, Dosovitskiy et al. 2021, Sec. 3.1), which
            learns from scratch on small data in far fewer steps.
    """

    image_size: tuple[int, int] = (256, 128)
    pool: Literal["mean", "token"] = "mean"
    branch_depth: int = 1
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.0
    conv_stem: int = 0

    def __post_init__(self) -> None:
        if self.pool not in ("mean", "token"):
            raise ValueError(f"pool must be 'mean' or 'token', got {self.pool!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (H, W) of positive sizes, got {self.image_size}")
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        if self.conv_stem < 0:
            raise ValueError(f"conv_stem must be >= 0 (convolutions per stage), got {self.conv_stem}")
        if self.branch_depth < 1:
            raise ValueError(f"branch_depth must be >= 1, got {self.branch_depth}")

    def timm_kwargs(self) -> dict[str, Any]:
        """The ``timm.create_model`` arguments these options set."""
        names = ("patch_size", "embed_dim", "depth", "num_heads")
        out = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        return {**out, "img_size": self.image_size, "drop_path_rate": self.drop_path_rate}


def is_transformer(name: str) -> bool:
    """Whether ``name`` is one of timm's vision transformers (``vit_*``, ``deit_*``, ``deit3_*``, with or
    without a weights tag such as ``vit_small_patch16_224.augreg_in21k``)."""
    import timm
    from timm.models import get_arch_name

    return get_arch_name(name) in timm.list_models(module=["vision_transformer", "deit"])


def timm_weights_path(name: str) -> Path:
    """Where ``pretrained: imagenet`` looks first for the weights of the timm model ``name``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "timm" / f"{name}.safetensors"


def conv_stem(patch_size: int, channels: int, depth: int = 1) -> nn.Sequential:
    """``log2(patch_size)`` stages of ``depth`` 3x3 convolutions + BatchNorm + ReLU (the first of each
    stage of stride 2; channels doubling up to ``channels``), then a 1x1 convolution to ``channels``:
    a patch projection of the same stride (Xiao et al. 2021)."""
    steps = patch_size.bit_length() - 1
    if patch_size < 2 or 2**steps != patch_size:
        raise ValueError(f"conv_stem needs a patch size that is a power of 2, got {patch_size}")
    layers: list[nn.Module] = []
    inputs = 3
    for i in range(steps):
        out = max(8, channels // 2 ** (steps - 1 - i))
        for j in range(depth):
            layers += [nn.Conv2d(inputs, out, 3, 2 if j == 0 else 1, 1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            inputs = out
    return nn.Sequential(*layers, nn.Conv2d(inputs, channels, 1))


def _imagenet_file(name: str) -> str:
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    local = timm_weights_path(name)
    if local.is_file():
        return str(local)
    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                return cached
    source = f"https://huggingface.co/{hub_id}" if hub_id else "timm's model page"
    raise PretrainedWeightsNotFound(
        f"ImageNet weights for {name} are not on this machine: expected {local} (or the Hugging Face "
        f"cache of {hub_id}). Nothing is downloaded by this project. Copy model.safetensors from {source} "
        f"to {local}, or pass its location with `pretrained: /path/to/weights.safetensors`, or train "
        f"from scratch with `pretrained: null`."
    )


def build_vit(
    name: str, pretrained: str | None = None, options: TransformerOptions | None = None
) -> nn.Module:
    """A timm transformer without its classifier, accepting any image size (``dynamic_img_size``)."""
    import timm

    options = options or TransformerOptions()
    if not is_transformer(name):
        raise ValueError(f"Unknown backbone {name!r}: neither a ResNet nor a timm vision transformer")
    kwargs: dict[str, Any] = dict(num_classes=0, global_pool="", dynamic_img_size=True)
    kwargs.update(options.timm_kwargs())
    if pretrained:
        path = _imagenet_file(name) if pretrained == "imagenet" else pretrained
        if not Path(path).is_file():
            raise PretrainedWeightsNotFound(
                f"Pretrained weights file not found: {path}. Give a timm weights file of {name} "
                f"(model.safetensors), `pretrained: imagenet` to read {timm_weights_path(name)} or the "
                f"Hugging Face cache, or `pretrained: null` to train from scratch."
            )
        overlay = {"file": str(path), "hf_hub_id": None, "url": None}  # this file, never a download
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    vit = timm.create_model(name, **kwargs)
    if options.conv_stem:
        if pretrained:
            raise ValueError("conv_stem replaces the patch projection: pretrained weights do not fit it")
        vit.patch_embed.proj = conv_stem(vit.patch_embed.patch_size[0], vit.embed_dim, options.conv_stem)
    return vit


@dataclass(frozen=True)
class TokenGrid:
    """Tokens ``[B, prefix + h*w, K]`` -> the patch tokens as a map ``[B, K, h, w]``.

    The ``reshape`` of :func:`cama.explain.gradient_cam` for a transformer's layers (the convention of
    pytorch-grad-cam's ``reshape_transform``): the ``prefix`` class / register tokens are dropped.

    >>> TokenGrid(prefix=1, grid=(2, 1))(torch.arange(6.0).view(1, 3, 2))
    tensor([[[[2.],
              [4.]],
    <BLANKLINE>
             [[3.],
              [5.]]]])
    """

    prefix: int
    grid: tuple[int, int]

    def __call__(self, tokens: Tensor) -> Tensor:
        h, w = self.grid
        if tokens.ndim != 3 or tokens.shape[1] != self.prefix + h * w:
            raise ValueError(
                f"expected tokens [B, {self.prefix} + {h}*{w}, K], got {tuple(tokens.shape)}"
            )
        patches = tokens[:, self.prefix:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    def pooled_grid(self, tokens: Tensor, pool: str) -> Tensor:
        """The feature map whose mean is the embedding: the patch tokens (``"mean"``), or the patch
        tokens shifted by ``class token - their mean`` (``"token"``, the class token first)."""
        grid = self(tokens)
        if pool == "mean":
            return grid
        shift = tokens[:, 0] - grid.mean(dim=(2, 3))
        return grid + shift[:, :, None, None]


class TokenEmbedding(nn.Module):
    """A timm ViT's input side: patch embedding, class / register tokens, position embedding
    (resampled to the image's grid), dropout and pre-norm: images ``[B, 3, H, W]`` -> tokens."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = getattr(vit, "reg_token", None)
        self.pos_embed = vit.pos_embed
        self.pos_drop, self.patch_drop, self.norm_pre = vit.pos_drop, vit.patch_drop, vit.norm_pre
        self.no_embed_class = bool(vit.no_embed_class)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.patch_size = tuple(vit.patch_embed.patch_size)

    def grid(self, size: tuple[int, int] | torch.Size) -> tuple[int, int]:
        """The patch grid ``(h, w)`` of images of ``size`` ``(H, W)``."""
        return int(size[0]) // self.patch_size[0], int(size[1]) // self.patch_size[1]

    def forward(self, images: Tensor) -> Tensor:
        from timm.layers import resample_abs_pos_embed

        x = self.patch_embed(images)
        if x.ndim == 3:  # [B, h*w, K] from a fixed-size patch embedding
            x = x.view(x.shape[0], *self.grid(images.shape[-2:]), x.shape[-1])
        batch, h, w, channels = x.shape
        x = x.reshape(batch, h * w, channels)
        prefix = [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        pos = self.pos_embed
        if pos is not None:
            prefix_tokens = 0 if self.no_embed_class else self.num_prefix_tokens
            pos = resample_abs_pos_embed(pos, new_size=(h, w), old_size=self.patch_embed.grid_size,
                                         num_prefix_tokens=prefix_tokens)
            if self.no_embed_class:
                x = x + pos
        x = torch.cat([*prefix, x], dim=1)
        if pos is not None and not self.no_embed_class:
            x = x + pos
        return self.norm_pre(self.patch_drop(self.pos_drop(x)))


class MultiBranchViT(nn.Module):
    """Shared input side and blocks, the last ``branch_depth`` blocks and the final norm copied per
    branch (CAMA's branches on a transformer); ``forward`` returns one ``[B, K, h, w]`` map per branch."""

    def __init__(
        self, name: str, num_branches: int = 2, pretrained: str | None = None,
        options: TransformerOptions | None = None,
    ) -> None:
        super().__init__()
        if num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {num_branches}")
        self.options = options or TransformerOptions()
        vit = build_vit(name, pretrained, self.options)
        depth, copied = len(vit.blocks), self.options.branch_depth
        if copied > depth:
            raise ValueError(f"branch_depth {copied} is more than the {depth} blocks of {name}")
        if vit.cls_token is None and self.options.pool == "token":
            raise ValueError(f"{name} has no class token: use pool 'mean'")
        self.embed = TokenEmbedding(vit)
        self.shared = nn.Sequential(*list(vit.blocks)[: depth - copied])
        last_blocks = nn.Sequential(*list(vit.blocks)[depth - copied:])
        # the mean of the patch tokens is taken before the final LayerNorm (as timm's own average pooling,
        # whose norm comes after the pool): a LayerNorm gives every token the same scale, so the mean of
        # normalised tokens could not let the background fade; the heads' BatchNorm follows the pool
        norm = vit.norm if self.options.pool == "token" else nn.Identity()
        branch = nn.ModuleDict({"blocks": last_blocks, "norm": norm})
        self.branches = nn.ModuleList([copy.deepcopy(branch) for _ in range(num_branches)])
        self.out_channels = int(vit.embed_dim)

    def token_grid(self, size: tuple[int, int] | torch.Size) -> TokenGrid:
        """The :class:`TokenGrid` of the token layers for images of ``size`` ``(H, W)``."""
        return TokenGrid(self.embed.num_prefix_tokens, self.embed.grid(size))

    def layer_names(self) -> list[list[str]]:
        """Per branch, the LayerNorm in front of its last block's attention: its tokens feed the class
        token and the patch tokens alike (the usual layer of gradient maps on a ViT)."""
        last = self.options.branch_depth - 1
        return [[f"branches.{i}.blocks.{last}.norm1"] for i in range(len(self.branches))]

    def stages_top_down(self) -> list[tuple[str, nn.Module]]:
        """The branches, the shared blocks (last first), the input side: the cascading randomization's
        blocks (Adebayo et al. 2018), top first."""
        depth = len(self.shared)
        shared = [(f"block{i}", self.shared[i]) for i in reversed(range(depth))]
        return [("branches", self.branches), *shared, ("embedding", self.embed)]

    def branch_tokens(self, images: Tensor) -> list[Tensor]:
        """Each branch's output tokens ``[B, prefix + h*w, K]`` (after the final norm for the class token)."""
        tokens = self.shared(self.embed(images))
        return [branch["norm"](branch["blocks"](tokens)) for branch in self.branches]

    def forward(self, images: Tensor) -> list[Tensor]:
        grid = self.token_grid(images.shape[-2:])
        return [grid.pooled_grid(tokens, self.options.pool) for tokens in self.branch_tokens(images)]


class ViTBody(nn.Module):
    """A one-branch :class:`MultiBranchViT` whose ``forward`` returns its map ``[B, K, h, w]`` (the
    backbone of the retrieval and few-shot models)."""

    def __init__(self, name: str, pretrained: str | None = None, options: TransformerOptions | None = None):
        super().__init__()
        self.net = MultiBranchViT(name, 1, pretrained, options)
        self.out_channels = self.net.out_channels

    def token_grid(self, size: tuple[int, int] | torch.Size) -> TokenGrid:
        return self.net.token_grid(size)

    def layer_names(self) -> list[list[str]]:
        return [[f"net.{name}" for names in self.net.layer_names() for name in names]]

    def stages_top_down(self) -> list[tuple[str, nn.Module]]:
        return self.net.stages_top_down()

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)[0]
