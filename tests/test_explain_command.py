"""``explain.py``: ranking lists with maps per branch as PNGs, from a data module or image folders; image
files of any bit depth, unreadable ones skipped, the JSON kept up to date."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from torchvision.io import decode_png, read_file, write_png

import explain
from cama.errors import InputError
from cama.loading import load_model
from cama.models import CAMA
from datamodules import write_reid_layout
from tests.test_images import write_png16

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cama_synthetic.yaml"
TINY_DATA = [
    "image_size=[64, 32]",
    "num_workers=0",
    "synthetic.num_train_ids=10",
    "val_ids=2",
    "synthetic.num_test_ids=6",
    "synthetic.num_distractors=4",
    "synthetic.num_junk=2",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A Lightning checkpoint of a small, untrained CAMA (as ModelCheckpoint writes it)."""
    torch.manual_seed(0)
    model = CAMA(num_classes=10, backbone="resnet10", num_branches=2)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": {"_class_path": "cama.models.CAMA", **model.hparams},  # as LightningCLI saves it
            "datamodule_hyper_parameters": {"image_size": (64, 32)},
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def png_size(path: Path) -> tuple[int, int]:
    image = decode_png(read_file(str(path)))
    return int(image.shape[1]), int(image.shape[2])


def test_config_data_module_ranking_lists_per_method(checkpoint, tmp_path):
    out = tmp_path / "out"
    written = explain.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--config",
            str(CONFIG),
            "--data",
            *TINY_DATA,
            "--methods",
            "ram",
            "dist_cam",
            "--top_k",
            "4",
            "--num_queries",
            "2",
            "--output",
            str(out),
            "--no_progress",
            "--no_contrastive",  # the rows below: no "why rank r beat the true match" row
        ]
    )
    assert len(written) == 2 * 2 and all(p.is_file() for p in written)
    # 4 rows (images, branch 1, branch 2, summed) of 5 images (query + top 4) of 64 x 32, shown 2x
    # (128 x 64 tiles), and less than two more rows of text (title, headers, captions, colour bar)
    height, width = png_size(written[0])
    assert 4 * 128 <= height < 6 * 128 and 5 * 64 <= width < 7 * 64
    rankings = json.loads((out / "rankings.json").read_text())
    assert len(rankings) == 2 and all(len(v) == 4 for v in rankings.values())
    assert all(isinstance(entry["match"], bool) for v in rankings.values() for entry in v)


def test_image_folders_with_market_names(checkpoint, tmp_path):
    root = write_reid_layout(
        tmp_path / "market",
        "market1501",
        seed=1,
        progress=False,
        num_train_ids=2,
        num_test_ids=4,
        num_distractors=2,
        num_junk=1,
    )
    queries = sorted((root / "query").iterdir())[:2]
    out = tmp_path / "out"
    written = explain.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--query",
            *map(str, queries),
            "--gallery",
            str(root / "bounding_box_test"),
            "--methods",
            "gradcam",
            "--top_k",
            "3",
            "--output",
            str(out),
            "--no_progress",
        ]
    )
    assert [p.name for p in written] == [f"{q.stem}_gradcam.png" for q in queries]
    height, width = png_size(written[0])  # the checkpoint's 64 x 32, shown 2x: 4 rows of 4 tiles
    assert 4 * 128 <= height < 6 * 128 and 4 * 64 <= width < 6 * 64
    rankings = json.loads((out / "rankings.json").read_text())
    for query in queries:  # the protocol: no gallery image of the same identity and camera
        pid, cam = query.name.split("_")[:2]
        assert all(not entry["gallery"].startswith(f"{pid}_{cam}") for entry in rankings[query.stem])


def test_unknown_file_names_rank_everything_but_the_query_itself(checkpoint, tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i in range(3):
        write_png(torch.randint(0, 255, (3, 40, 20), dtype=torch.uint8), str(gallery / f"img{i}.png"))
    written = explain.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--query",
            str(gallery / "img0.png"),
            "--gallery",
            str(gallery),
            "--methods",
            "ram",
            "--top_k",
            "5",
            "--output",
            str(tmp_path / "o"),
            "--no_progress",
        ]
    )
    rankings = json.loads((tmp_path / "o" / "rankings.json").read_text())
    assert len(written) == 1 and len(rankings["img0"]) == 2  # 3 images, less the query itself
    assert all(e["match"] is None and e["gallery"] != "img0" for e in rankings["img0"])


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--checkpoint", "missing.ckpt", "--query", "q", "--gallery", "g"],
            "missing.ckpt does not exist",
        ),
        (["--checkpoint", "{ckpt}"], "give --config"),
        (["--checkpoint", "{ckpt}", "--query", "{empty}", "--gallery", "{empty}"], "holds no image"),
        (
            ["--checkpoint", "{ckpt}", "--query", "nowhere/q.jpg", "--gallery", "{empty}"],
            "query path not found",
        ),
        (["--checkpoint", "{ckpt}", "--config", "nowhere.yaml"], "config file not found"),
    ],
)
def test_clear_errors(checkpoint, tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(ckpt=checkpoint, empty=empty) for a in args]
    with pytest.raises(InputError, match=message):
        explain.main(argv)


def test_unknown_method_is_rejected(checkpoint):
    with pytest.raises(InputError, match="unknown explanation method"):
        explain.main(["--checkpoint", str(checkpoint), "--config", str(CONFIG), "--methods", "rise"])


def _save(model, path: Path, image_size) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "datamodule_hyper_parameters": {"image_size": image_size},
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def test_few_shot_checkpoint_episodes_from_a_config_and_from_support_folders(tmp_path):
    from cama.models import ProtoNet

    torch.manual_seed(0)
    model = ProtoNet(num_classes=5)
    checkpoint = _save(model, tmp_path / "protonet.ckpt", (32, 32))
    out = tmp_path / "config"
    written = explain.main([
        "--checkpoint", str(checkpoint), "--config", str(REPO / "configs" / "protonet_synthetic.yaml"),
        "--model_class", "cama.models.ProtoNet", "--data", "image_size=[32, 32]", "synthetic.height=32",
        "synthetic.width=32", "synthetic.num_classes=15", "synthetic.few_shot_splits=[5, 5, 5]",
        "synthetic.images_per_class=6", "eval_query=2",
        "num_workers=0", "--methods", "dist_cam", "fam", "--episodes", "2", "--num_queries", "3",
        "--output", str(out), "--no_progress", "--no_contrastive",  # no row under a misclassified query
    ])
    assert sorted(p.name for p in written) == [
        "episode000_dist_cam.png", "episode000_fam.png", "episode001_dist_cam.png", "episode001_fam.png"
    ]
    # 3 probe rows of 4 tiles (query | support | map on the query | map on the support), 32 px shown 4x
    height, width = png_size(written[0])
    assert 3 * 128 <= height < 5 * 128 and 4 * 128 <= width < 5 * 128
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions["episode000"]) == 5 * 2  # 5-way, 2 queries a class
    # files: two classes of two supports, one query in a folder named like a class (its truth)
    support = tmp_path / "support"
    for c, name in enumerate(("cat", "dog")):
        (support / name).mkdir(parents=True)
        for i in range(2):
            write_png(torch.full((3, 40, 40), 60 * c + 20 * i, dtype=torch.uint8), str(support / name / f"{i}.png"))
    (tmp_path / "q" / "dog").mkdir(parents=True)
    write_png(torch.full((3, 40, 40), 70, dtype=torch.uint8), str(tmp_path / "q" / "dog" / "x.png"))
    files = explain.main([
        "--checkpoint", str(checkpoint), "--model_class", "cama.models.ProtoNet", "--support", str(support),
        "--query", str(tmp_path / "q" / "dog"), "--methods", "fam", "--output", str(tmp_path / "files"),
        "--no_progress",
    ])
    assert [p.name for p in files] == ["files_fam.png"]
    (truth,) = json.loads((tmp_path / "files" / "predictions.json").read_text())["files"]
    assert truth["truth"] == 1 and truth["query"] == 4  # after the 4 supports
    with pytest.raises(InputError, match="same number of images"):
        (support / "dog" / "1.png").unlink()
        explain.main(["--checkpoint", str(checkpoint), "--model_class", "cama.models.ProtoNet", "--support",
                      str(support), "--query", str(tmp_path / "q" / "dog"), "--output", str(tmp_path / "bad")])


def test_retrieval_checkpoint_ranks_every_other_image_with_fam(tmp_path):
    from cama.models import RetrievalModel

    torch.manual_seed(0)
    model = RetrievalModel(num_classes=5, backbone="resnet10", embedding_size=16)
    checkpoint = _save(model, tmp_path / "retrieval.ckpt", (32, 32))
    out = tmp_path / "out"
    written = explain.main([
        "--checkpoint", str(checkpoint), "--config", str(REPO / "configs" / "retrieval_synthetic.yaml"),
        "--model_class", "cama.models.RetrievalModel", "--data", "image_size=[32, 32]", "resize_size=36",
        "synthetic.height=36", "synthetic.width=36", "synthetic.num_classes=10", "synthetic.images_per_class=4",
        "num_workers=0", "val_classes=1",
        "--methods", "fam", "--num_queries", "2", "--top_k", "3", "--output", str(out), "--no_progress",
    ])
    assert len(written) == 2
    rankings = json.loads((out / "rankings.json").read_text())
    for query, listed in rankings.items():
        assert len(listed) == 3 and all(item["gallery"] != query for item in listed)  # never itself
        label = query.split("_class")[1]
        assert [item["match"] for item in listed] == [item["gallery"].split("_class")[1] == label for item in listed]


def test_rerank_orders_each_list_by_the_re_ranked_distances(checkpoint, tmp_path):
    from cama.metrics.distances import pairwise_distance
    from cama.metrics.ranking import reid_excluded
    from cama.metrics.rerank import re_ranking

    root = write_reid_layout(tmp_path / "market", "market1501", seed=1, progress=False, num_train_ids=2,
                             num_test_ids=4, num_distractors=2, num_junk=0)
    queries = sorted((root / "query").iterdir())[:3]
    gallery = sorted((root / "bounding_box_test").iterdir())
    out = tmp_path / "out"
    explain.main(["--checkpoint", str(checkpoint), "--query", *map(str, queries), "--gallery",
                  str(root / "bounding_box_test"), "--methods", "ram", "--top_k", "5", "--rerank",
                  "--output", str(out), "--no_progress", "--image_size", "64", "32"])
    listed = json.loads((out / "rankings.json").read_text())
    # independently: embed, re-rank with the explained queries as the pool, protocol, stable order
    from explain_command.common import FileImages

    model = load_model(checkpoint, "cama.models.CAMA")
    images = FileImages(queries + gallery, (64, 32))
    with torch.no_grad():
        q = model(images.images(range(3), torch.device("cpu")))
        g = model(images.images(range(3, 3 + len(gallery)), torch.device("cpu")))
    distances = re_ranking(pairwise_distance(q, g), pairwise_distance(q, q), pairwise_distance(g, g))
    ids = [tuple(int(x) for x in p.stem.split("_c")[0:1]) + (int(p.stem.split("_c")[1][0]) - 1,) for p in queries + gallery]
    pids, cams = torch.tensor([i[0] for i in ids]), torch.tensor([i[1] for i in ids])
    excluded = reid_excluded(pids[:3], cams[:3], pids[3:], cams[3:])
    for row, query in enumerate(queries):
        order = torch.sort(distances[row].masked_fill(excluded[row], float("inf")), stable=True).indices[:5]
        assert [e["gallery"] for e in listed[query.stem]] == [gallery[int(i)].stem for i in order]


# -- image files of any kind, unreadable ones -----------------------------------------------------


def _gallery(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True)
    torch.manual_seed(1)
    for i in range(count):
        write_png(torch.randint(0, 256, (3, 40, 20), dtype=torch.uint8), str(folder / f"g{i}.png"))
    return folder


def _explain_files(checkpoint: Path, queries: list[Path], gallery: Path, out: Path) -> list[Path]:
    return explain.main(["--checkpoint", str(checkpoint), "--query", *map(str, queries), "--gallery",
                         str(gallery), "--methods", "ram", "--top_k", "4", "--output", str(out),
                         "--no_progress"])


def test_a_16_bit_png_query_is_explained_like_its_8_bit_copy(checkpoint, tmp_path):
    gallery = _gallery(tmp_path / "gallery")
    pixels = torch.randint(0, 256, (3, 40, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    (tmp_path / "8").mkdir()
    (tmp_path / "16").mkdir()
    write_png(pixels, str(tmp_path / "8" / "q.png"))
    write_png16(tmp_path / "16" / "q.png", pixels.permute(1, 2, 0).numpy().astype(np.uint16) * 257)
    eight = _explain_files(checkpoint, [tmp_path / "8" / "q.png"], gallery, tmp_path / "out8")
    wide = _explain_files(checkpoint, [tmp_path / "16" / "q.png"], gallery, tmp_path / "out16")
    assert json.loads((tmp_path / "out16" / "rankings.json").read_text()) == json.loads(
        (tmp_path / "out8" / "rankings.json").read_text())
    # the same picture: the query drawn as itself, the same maps, ranking and distances
    assert torch.equal(decode_png(read_file(str(wide[0]))), decode_png(read_file(str(eight[0]))))


def test_an_unreadable_query_is_named_and_skipped_and_the_others_are_explained(checkpoint, tmp_path, capsys):
    gallery = _gallery(tmp_path / "gallery")
    queries = [tmp_path / "q0.png", tmp_path / "bad.png", tmp_path / "q2.png"]
    for i, query in enumerate(queries):
        write_png(torch.full((3, 40, 20), 40 * i, dtype=torch.uint8), str(query))
    queries[1].write_bytes(queries[1].read_bytes()[:-30])  # cut short
    written = _explain_files(checkpoint, queries, gallery, tmp_path / "out")
    assert [p.name for p in written] == ["q0_ram.png", "q2_ram.png"] and all(p.is_file() for p in written)
    assert sorted(json.loads((tmp_path / "out" / "rankings.json").read_text())) == ["q0", "q2"]
    skipped = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert skipped == [f"explain.py: skipped {queries[1]}: truncated PNG (no IEND chunk at the end)"]
    with pytest.raises(InputError, match="no readable query image"):  # nothing left to explain
        _explain_files(checkpoint, [queries[1]], gallery, tmp_path / "none")


def test_rankings_json_keeps_the_queries_explained_before_a_failure(checkpoint, tmp_path, monkeypatch):
    import explain_command.ranking

    gallery = _gallery(tmp_path / "gallery")
    queries = [gallery / "g0.png", gallery / "g1.png", gallery / "g2.png"]
    pictures = []

    def second_fails(picture, output, name, method):
        if pictures:
            raise RuntimeError("disk full")
        pictures.append(name)
        return output / name

    monkeypatch.setattr(explain_command.ranking, "write_picture", second_fails)
    with pytest.raises(RuntimeError, match="disk full"):
        _explain_files(checkpoint, queries, gallery, tmp_path / "out")
    rankings = json.loads((tmp_path / "out" / "rankings.json").read_text())
    assert list(rankings) == ["g0"] and len(rankings["g0"]) == 3  # the gallery less the query itself
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["rankings.json"]  # no temporary file left


def test_few_shot_files_skip_an_unreadable_query(tmp_path, capsys):
    from cama.models import ProtoNet

    torch.manual_seed(0)
    checkpoint = _save(ProtoNet(num_classes=5), tmp_path / "protonet.ckpt", (32, 32))
    for c, name in enumerate(("cat", "dog")):
        (tmp_path / "support" / name).mkdir(parents=True)
        image = torch.full((3, 40, 40), 60 * c, dtype=torch.uint8)
        write_png(image, str(tmp_path / "support" / name / "0.png"))
    (tmp_path / "q").mkdir()
    write_png(torch.full((3, 40, 40), 70, dtype=torch.uint8), str(tmp_path / "q" / "a.png"))
    (tmp_path / "q" / "b.png").write_text("<html>404</html>")
    explain.main(["--checkpoint", str(checkpoint), "--model_class", "cama.models.ProtoNet", "--support",
                  str(tmp_path / "support"), "--query", str(tmp_path / "q"), "--methods", "fam", "--output",
                  str(tmp_path / "out"), "--no_progress"])
    assert f"explain.py: skipped {tmp_path / 'q' / 'b.png'}: not a JPEG, PNG" in capsys.readouterr().err
    (episode,) = json.loads((tmp_path / "out" / "predictions.json").read_text()).values()
    assert [row["query"] for row in episode] == [2]  # one query, after the 2 supports


def test_a_png_with_damaged_pixel_data_is_skipped_not_a_crash(checkpoint, tmp_path):
    """torchvision's PNG decoder ends the process on pixel data libpng rejects: the command must not."""
    import subprocess
    import sys

    gallery = _gallery(tmp_path / "gallery")
    damaged = tmp_path / "damaged.png"
    data = bytearray((gallery / "g1.png").read_bytes())
    data[60:90] = b"x" * 30  # inside the image data: the size, the header and the IEND chunk are intact
    damaged.write_bytes(bytes(data))
    command = [sys.executable, "explain.py", "--checkpoint", str(checkpoint), "--query", str(damaged),
               str(gallery / "g0.png"), "--gallery", str(gallery), "--methods", "ram", "--top_k", "2",
               "--output", str(tmp_path / "out"), "--no_progress"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "checking images" not in result.stderr  # --no_progress
    assert f"explain.py: skipped {damaged}: broken data stream" in result.stderr
    assert sorted(json.loads((tmp_path / "out" / "rankings.json").read_text())) == ["g0"]
