"""Sanity checks for saliency maps: cascading model-parameter randomization (Adebayo et al. 2018).

Adebayo, Gilmer, Muelly, Goodfellow, Hardt and Kim, "Sanity Checks for Saliency Maps", NeurIPS
2018, Sec. 3 ("model parameter randomization test"): re-initialise the weights of a trained model
block by block, **from the top (output) block downward and cumulatively**, and after each step
compare the explanation maps of the randomized model with those of the trained one. A method
whose maps stay similar when the weights that produced the prediction are destroyed does not
explain the model (it behaves like an edge detector of the input), and fails the check. The
paper's similarity measures, all computed per map here and averaged over the maps:

* :func:`spearman_correlation`: Spearman rank correlation of the maps' pixels, with and without
  absolute values (the paper reports both);
* :func:`ssim`: the structural similarity index (Wang, Bovik, Sheikh and Simoncelli, "Image
  quality assessment: from error visibility to structural similarity", IEEE TIP 2004) of the
  min-max-normalised maps.

:func:`cascading_randomization` does the randomization (and always gives the model back as it
was), :func:`sanity_check` runs the whole test with any ``explain_fn(model, images)``.
The project's models list their blocks, top first, with ``randomization_blocks()``
(:class:`cama.protocols.HasRandomizationBlocks`; the backbones' ``stages_top_down()``).

Pure tensor functions, batched over the maps (no Python loop over images); nothing here knows a
Lightning module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .render import minmax_normalize

__all__ = [
    "SanityCheckResult",
    "cascading_randomization",
    "sanity_check",
    "spearman_correlation",
    "ssim",
]


# ---------------------------------------------------------------------------------------- similarity
def _average_ranks(values: Tensor) -> Tensor:
    """Ranks ``0 .. N-1`` of each row of ``values`` ``[B, N]``; tied values share their mean rank."""
    count = values.shape[1]
    ordered, order = values.sort(dim=1)
    position = torch.arange(count, device=values.device).expand_as(order)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # a new run of equal values begins
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, torch.zeros_like(position)).cummax(dim=1).values
    last_flipped = torch.where(ends, position, torch.full_like(position, count)).flip(1).cummin(dim=1).values
    mean_rank = (first + last_flipped.flip(1)).to(torch.float64) / 2
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each row of ``a`` and ``b`` (Adebayo et al. 2018, Sec. 3).

    The Pearson correlation of the rows' ranks, with tied values given the mean of their ranks
    (as :func:`scipy.stats.spearmanr`): ReLU'd maps hold many equal zeros. A row that is constant
    in ``a`` or ``b`` has no rank correlation: NaN, as SciPy gives.

    Args:
        a, b: ``[B, H, W]`` maps or ``[B, N]`` rows (any trailing shape, flattened per row).

    Returns:
        ``[B]`` correlations in ``[-1, 1]`` (float32), computed in float64.
    """
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"a and b must be [B, ...] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ranks_a = _average_ranks(a.detach().flatten(1).to(torch.float64))
    ranks_b = _average_ranks(b.detach().flatten(1).to(torch.float64))
    ranks_a = ranks_a - ranks_a.mean(dim=1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(ranks_a, dim=1) * torch.linalg.vector_norm(ranks_b, dim=1)
    correlation = (ranks_a * ranks_b).sum(dim=1) / norms  # 0 / 0 = NaN for a constant row
    return correlation.clamp(-1.0, 1.0).float()


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    offsets = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity of each pair of maps (Wang et al. 2004, Eq. 13 and 15).

    Each map is first min-max normalised to ``[0, 1]`` (:func:`minmax_normalize`; a constant map
    becomes zeros), so the data range is ``L = 1``, ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2``
    (``K1 = 0.01``, ``K2 = 0.03``). The local means, variances and covariance are weighted by a
    ``window x window`` Gaussian of standard deviation ``sigma``, and SSIM is averaged over every
    pixel (the paper's MSSIM).

    Borders ("same" size, no padding values): each local statistic is the weighted mean over the
    pixels of the window that lie inside the map, the Gaussian weights renormalised to sum to 1.
    Away from the border this is exactly Wang et al.'s window; at the border no value is invented,
    and a map smaller than the window (an 8x4 feature map) still gets an SSIM.

    Args:
        a, b: ``[B, H, W]`` maps.
        window: side of the Gaussian window (odd).
        sigma: its standard deviation.

    Returns:
        ``[B]`` mean SSIM (1 for identical maps), float32, computed in float64.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"a and b must be [B, H, W] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd size, got {window}")
    x = minmax_normalize(a.detach().to(torch.float64))
    y = minmax_normalize(b.detach().to(torch.float64))
    weights = _gaussian_window(window, sigma, x.device)
    stats = torch.stack([x, y, x * x, y * y, x * y, torch.ones_like(x)], dim=1)  # [B, 6, H, W]
    rows = weights.view(1, 1, window, 1).expand(6, 1, window, 1)
    cols = weights.view(1, 1, 1, window).expand(6, 1, 1, window)
    pad = window // 2
    smoothed = F.conv2d(F.conv2d(stats, rows, padding=(pad, 0), groups=6), cols, padding=(0, pad), groups=6)
    mu_x, mu_y, xx, yy, xy = (smoothed[:, :5] / smoothed[:, 5:]).unbind(dim=1)  # renormalised at the border
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean(dim=(1, 2)).float()


# ---------------------------------------------------------------------------------------- randomization
def _reinitialise(block: nn.Module) -> None:
    """Re-initialise every module of ``block``: its own ``reset_parameters()`` (BatchNorm: also
    its running statistics), else a normal init of its direct parameters (std ``1/sqrt(fan_in)``)."""
    for module in block.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            continue
        for parameter in module.parameters(recurse=False):
            fan_in = parameter[0].numel() if parameter.dim() > 1 else parameter.numel()
            nn.init.normal_(parameter, std=1.0 / math.sqrt(max(fan_in, 1)))
        running = getattr(module, "reset_running_stats", None)
        if callable(running):
            running()


@contextmanager
def cascading_randomization(
    model: nn.Module, blocks: Sequence[nn.Module], names: Sequence[str] | None = None, seed: int = 0
) -> Iterator[Iterator[tuple[str, int]]]:
    """Cascading randomization of ``blocks`` (Adebayo et al. 2018, Sec. 3.1), restoring ``model`` after.

    The context yields an iterator of ``(name, step)``: at step ``s`` blocks ``0 .. s`` (``blocks``
    is ordered top / output first) have been re-initialised, cumulatively, and the blocks below
    are the trained ones. Re-initialisation uses each module's ``reset_parameters()`` (for
    BatchNorm this resets the running statistics too), else a normal init of the module's own
    parameters; step ``s`` runs with the CPU generator (and the blocks' GPUs') seeded ``seed + s`` in a forked RNG, so it is
    reproducible and the caller's RNG state is untouched.

    On leaving the context -- after the last step, a ``break`` or an exception -- every parameter
    and buffer of ``model`` (persistent or not) gets its original values back, in place (the
    tensors, and so an optimizer's references, stay the same), and every module its train/eval
    flag.

    Args:
        model: the model that holds ``blocks``.
        blocks: its blocks, top (output) first.
        names: one name per block (default ``block0``, ``block1``, ...).
        seed: base seed of the re-initialisation.
    """
    names = list(names) if names is not None else [f"block{i}" for i in range(len(blocks))]
    if len(names) != len(blocks):
        raise ValueError(f"{len(blocks)} blocks but {len(names)} names")
    with torch.no_grad():
        saved = [(t, t.detach().clone()) for t in (*model.parameters(), *model.buffers())]
    modes = [(module, module.training) for module in model.modules()]
    owned = {id(t) for t in (*model.parameters(), *model.buffers())}
    if any(id(t) not in owned for b in blocks for t in (*b.parameters(), *b.buffers())):
        raise ValueError("every block must be a part of `model` (only the model's tensors are restored)")
    cuda = sorted({p.device.index or 0 for b in blocks for p in b.parameters() if p.device.type == "cuda"})

    def steps() -> Iterator[tuple[str, int]]:
        for step, (name, block) in enumerate(zip(names, blocks)):
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                # the generators the blocks draw from, and no other (torch.manual_seed would seed
                # every GPU, and queue it on one not yet initialised: the caller's states change)
                torch.default_generator.manual_seed(seed + step)
                for index in cuda:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(seed + step)
                _reinitialise(block)
            yield name, step

    try:
        yield steps()
    finally:
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)
        for module, training in modes:
            module.train(training)


# ---------------------------------------------------------------------------------------- the test
@dataclass
class SanityCheckResult:
    """Similarity of each method's maps to the trained model's after each cascading step.

    ``blocks[s]`` names step ``s`` (every block down to it is randomized). Each field maps a
    method to ``[S]`` means over the maps (NaN Spearman rows, constant maps, left out).
    """

    blocks: list[str]
    spearman: dict[str, Tensor]  # signed maps
    spearman_abs: dict[str, Tensor]  # absolute values of the maps
    ssim: dict[str, Tensor]  # of the absolute values, each min-max normalised

    def scalars(self, prefix: str = "sanity") -> dict[str, float]:
        """``{"<prefix>/<method>/<measure>_<block>": value}`` with measure ``spearman``,
        ``spearman_abs`` and ``ssim``."""
        out: dict[str, float] = {}
        for measure in ("spearman", "spearman_abs", "ssim"):
            for method, values in getattr(self, measure).items():
                for block, value in zip(self.blocks, values.tolist()):
                    out[f"{prefix}/{method}/{measure}_{block}"] = value
        return out


def sanity_check(
    explain_fn: Callable[[nn.Module, Tensor], Mapping[str, Tensor]],
    model: nn.Module,
    blocks: Sequence[nn.Module],
    block_names: Sequence[str] | None,
    images: Tensor,
    seed: int = 0,
) -> SanityCheckResult:
    """Adebayo et al.'s cascading model-parameter randomization test of every method of ``explain_fn``.

    The trained model's maps are computed once; then ``blocks`` (top first) are re-initialised
    cumulatively (:func:`cascading_randomization`) and after each step the maps are computed again
    and compared with the trained ones: Spearman rank correlation of the signed maps and of their
    absolute values, and SSIM of the absolute values (each min-max normalised). The model runs in
    eval mode; afterwards it is exactly as it was (weights, buffers, train/eval flags).

    Args:
        explain_fn: ``explain_fn(model, images) -> {method: maps [B, H, W]}``; it must read the
            model it is given (e.g. through :class:`cama.viz.ModelExplainer`) and work in eval mode.
        model: the trained model.
        blocks: its blocks, top (output) first.
        block_names: their names (default ``block0``, ...).
        images: the inputs explained, ``[B, ...]``.
        seed: seed of the re-initialisation.
    """
    with cascading_randomization(model, blocks, block_names, seed) as steps:
        model.eval()
        trained = {method: maps.detach() for method, maps in explain_fn(model, images).items()}
        names: list[str] = []
        rows: dict[str, list[list[Tensor]]] = {m: [[], [], []] for m in trained}
        for name, _ in steps:
            names.append(name)
            for method, maps in explain_fn(model, images).items():
                reference, maps = trained[method], maps.detach()
                signed = spearman_correlation(reference, maps)
                absolute = spearman_correlation(reference.abs(), maps.abs())
                similarity = ssim(reference.abs(), maps.abs())
                for i, value in enumerate((signed, absolute, similarity)):
                    rows[method][i].append(value.nanmean())
    fields = [{m: torch.stack(r[i]) if r[i] else torch.empty(0) for m, r in rows.items()} for i in range(3)]
    return SanityCheckResult(names, *fields)
