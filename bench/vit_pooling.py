"""How much of a class-token ViT's similarity its maps' pattern can show.

    python bench/vit_pooling.py --checkpoint runs/vit_synthetic/version_0/checkpoints/best-....ckpt
        [--config configs/vit_synthetic.yaml] [--queries 200]

With ``transformer.pool: token`` the embedding of branch ``i`` is its class token ``c_i``; the maps read
the grid ``F_i = BN(P_i + (c_i - mean P_i))`` (``cama/backbones/vit.py``), whose mean is ``BN(c_i)``.
Its part ``U_i = F_i - BN(P_i)`` is one vector, the same at every location: the maps carry it in their
level, not in their pattern. For each test query against its top-ranked gallery image ``g`` (the
reference the callbacks explain against), with the per-branch embedding slices ``t_i`` of ``g`` and the
scale ``1 / ||mean F_i||`` of the query's L2-normalised slices, the similarity splits exactly into

    s = sum_i <t_i, mean BN(P_i)> / ||mean F_i||  +  sum_i <t_i, U_i> / ||mean F_i||
        (the patch tokens: the maps' pattern)        (the class token's offset: uniform)

Printed: the median and quartiles over the queries of the uniform share ``|offset| / (|patch| +
|offset|)``, and the share of queries where the offset is larger than the patch part. For a
``pool: mean`` model the offset is 0 by construction (the script says so and stops).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cama.loading import instantiate_data, load_model, read_config  # noqa: E402


def split_similarity(model, queries: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(patch part, offset part)`` ``[Q]`` of ``<e(q), references>`` for a class-token CAMA on a ViT."""
    net = model.backbone
    grid = net.token_grid(queries.shape[-2:])
    patch, offset = [], []
    start = 0
    for out, head in zip(net.branch_tokens(queries), model.heads):
        full = head.features(grid.pooled_grid(out, "token"))  # F_i, whose mean is BN(c_i)
        patches = head.features(grid(out))  # BN(P_i): the same affine map, without the offset
        scale = full.mean(dim=(2, 3)).norm(dim=1)
        t = references[:, start: start + full.shape[1]]
        start += full.shape[1]
        patch.append((t * patches.mean(dim=(2, 3))).sum(1) / scale)
        offset.append((t * (full - patches)[:, :, 0, 0]).sum(1) / scale)
    return torch.stack(patch).sum(0), torch.stack(offset).sum(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", default=str(REPO / "configs" / "vit_synthetic.yaml"))
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    model = load_model(args.checkpoint).eval()
    if model.hparams.transformer is None or model.hparams.transformer.pool != "token":
        print("not a class-token transformer: the maps decompose its embedding exactly (offset 0)")
        return
    data = instantiate_data(read_config(args.config))
    data.setup("test")
    images, is_query = [], []
    for batch in data.test_dataloader():
        images.append(batch["image"])
        is_query.append(batch["is_query"])
    images, is_query = torch.cat(images), torch.cat(is_query)
    with torch.no_grad():
        embeddings = torch.cat([model(chunk) for chunk in images.split(128)])
        queries = torch.nonzero(is_query).flatten()[: args.queries]
        gallery = torch.nonzero(~is_query).flatten()
        top = (embeddings[queries] @ embeddings[gallery].T).argmax(1)
        references = embeddings[gallery[top]]
        patch, offset = split_similarity(model, images[queries], references)
        total = (embeddings[queries] * references).sum(1)
    torch.testing.assert_close(patch + offset, total, atol=1e-4, rtol=1e-4)  # the split is exact
    share = offset.abs() / (patch.abs() + offset.abs())
    q1, median, q3 = torch.quantile(share, torch.tensor([0.25, 0.5, 0.75])).tolist()
    print(f"{len(queries)} queries against their top-ranked gallery image: similarity {total.mean():.3f} on average")
    print(f"uniform (class-token offset) share of the similarity: median {median:.3f} (quartiles {q1:.3f}-{q3:.3f});"
          f" larger than the patch part for {100 * float((share > 0.5).float().mean()):.0f}% of the queries")


if __name__ == "__main__":
    main()
