"""explain.py's ``--max_sensitivity`` (sensitivity.json) against Yeh et al.'s definition written out, its
argument checks, and the few-shot flow's use of the layer CAMs' options (``--gradient_layers``,
``--layer_norm``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torchvision.io import read_file, write_png

import explain
from callbacks.sanity_checks import maps_against
from cama.errors import InputError
from cama.loading import load_model
from cama.viz import ModelExplainer
from cama.viz.episodes import episode_maps
from datamodules.images import IMAGENET_STD
from explain_command.common import FileImages
from explain_command.episodes import folder_episode
from tests.test_explain_command import _save, checkpoint  # noqa: F401 (a fixture)

RADIUS, SAMPLES, SEED = 0.05, 3, 7


def _naive_max_sensitivity(map_of, images: torch.Tensor, std) -> list[dict[str, float]]:
    """Yeh et al.'s SENS_MAX estimate as max_sensitivity's docstring defines it, one image and one sample
    at a time: sample s draws one uniform [B, C, H, W] field (in sample order), the picture of image b
    moves by (2u - 1) r, its input by that over std; the largest Frobenius change of each method's map
    over the samples, divided by the unperturbed map's norm."""
    generator = torch.Generator().manual_seed(SEED)
    noise = [torch.rand(images.shape, generator=generator) for _ in range(SAMPLES)]
    scale = RADIUS / torch.tensor(std).view(-1, 1, 1)
    out = []
    for b in range(images.shape[0]):
        base = map_of(images[b : b + 1], b)
        largest = {m: 0.0 for m in base}
        for s in range(SAMPLES):
            moved = map_of(images[b : b + 1] + (2 * noise[s][b : b + 1] - 1) * scale, b)
            for m in base:
                largest[m] = max(largest[m], float((moved[m] - base[m]).double().pow(2).sum().sqrt()))
        out.append({m: largest[m] / float(base[m].double().pow(2).sum().sqrt()) for m in base})
    return out


def _ranking_files(root: Path) -> tuple[Path, Path]:
    generator = torch.Generator().manual_seed(1)
    for folder, names in (("q", ["0001_c1s1_000001_00", "0002_c1s1_000001_00"]),
                          ("g", ["0001_c2s1_000001_00", "0002_c2s1_000001_00", "0003_c2s1_000001_00"])):
        (root / folder).mkdir(parents=True)
        for name in names:
            write_png(torch.randint(0, 256, (3, 64, 32), generator=generator, dtype=torch.uint8),
                      str(root / folder / f"{name}.png"))
    return root / "q", root / "g"


def test_ranking_max_sensitivity_is_yeh_et_al_definition_on_the_queries(checkpoint, tmp_path):  # noqa: F811
    queries, gallery = _ranking_files(tmp_path)
    out = tmp_path / "out"
    explain.main(["--checkpoint", str(checkpoint), "--query", str(queries), "--gallery", str(gallery),
                  "--methods", "ram", "gradcam", "--top_k", "2", "--output", str(out), "--no_progress",
                  "--device", "cpu", "--seed", str(SEED), "--max-sensitivity", str(SAMPLES),
                  "--sensitivity_radius", str(RADIUS), "--no_contrastive"])
    summary = json.loads((out / "sensitivity.json").read_text())
    rankings = json.loads((out / "rankings.json").read_text())
    assert summary["samples"] == SAMPLES and summary["radius"] == RADIUS and summary["seed"] == SEED
    assert summary["queries"] == [p.stem for p in sorted(queries.iterdir())]

    model = load_model(checkpoint, None, torch.device("cpu"))
    explainer = ModelExplainer(model)
    files = FileImages(sorted(queries.iterdir()) + sorted(gallery.iterdir()), (64, 32))
    images = files.images(range(2), torch.device("cpu"))
    stems = [f.stem for f in files.files]
    top = [stems.index(rankings[q][0]["gallery"]) for q in summary["queries"]]  # each query's top-1 image
    references = explainer.features(files.images(top, torch.device("cpu"))).embedding

    def map_of(image, b):
        return maps_against(explainer, explainer.features(image), references[b : b + 1], ["ram", "gradcam"])

    expected = _naive_max_sensitivity(map_of, images, IMAGENET_STD)
    for method in ("ram", "gradcam"):
        values = [row[method] for row in expected]
        scored = summary["methods"][method]
        assert scored["per_query"] == pytest.approx(values, rel=1e-3, abs=1e-6)
        assert all(v > 0 for v in values)  # the maps move: the check can tell
        mean = sum(values) / 2
        half = 1.96 * math.sqrt(sum((v - mean) ** 2 for v in values) / 1) / math.sqrt(2)
        assert scored["max_sensitivity"] == pytest.approx(mean, rel=1e-3)
        assert scored["max_sensitivity_ci95"] == pytest.approx(half, rel=1e-3, abs=1e-7)


RADIUS_ERROR = "--sensitivity_radius must be a finite number"


@pytest.mark.parametrize("bad, message", [
    (["--max_sensitivity", "-1"], "--max_sensitivity must be >= 0"),
    (["--max-sensitivity", "2", "--sensitivity_radius", "-0.1"], RADIUS_ERROR),
    (["--max_sensitivity", "2", "--sensitivity_radius", "nan"], RADIUS_ERROR),
])
def test_bad_sensitivity_arguments_are_refused_before_any_work(tmp_path, bad, message):
    with pytest.raises(InputError, match=message):  # before the (missing) checkpoint is read
        explain.main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--config", "x.yaml", *bad])


def _episode_files(root: Path) -> tuple[Path, Path]:
    generator = torch.Generator().manual_seed(2)
    for c, name in enumerate(("cat", "dog")):
        (root / "support" / name).mkdir(parents=True)
        for i in range(2):
            write_png(torch.randint(0, 256, (3, 32, 32), generator=generator, dtype=torch.uint8),
                      str(root / "support" / name / f"{i}.png"))
    (root / "q" / "dog").mkdir(parents=True)
    for i in range(2):
        write_png(torch.randint(0, 256, (3, 32, 32), generator=generator, dtype=torch.uint8),
                  str(root / "q" / "dog" / f"{i}.png"))
    return root / "support", root / "q" / "dog"


def test_few_shot_uses_the_layer_cam_options_for_its_maps_and_max_sensitivity(tmp_path):
    from cama.models import ProtoNet

    torch.manual_seed(0)
    ckpt = _save(ProtoNet(num_classes=5), tmp_path / "protonet.ckpt", (32, 32))
    support, queries = _episode_files(tmp_path)
    layers = ["backbone.blocks.2.0", "backbone.blocks.3.0"]

    def run(norm: str, *extra: str) -> Path:
        out = tmp_path / norm
        (png,) = explain.main([
            "--checkpoint", str(ckpt), "--model_class", "cama.models.ProtoNet", "--support", str(support),
            "--query", str(queries), "--methods", "gradcam", "--output", str(out), "--no_progress",
            "--device", "cpu", "--gradient_layers", *layers, "--layer_norm", norm, *extra,
        ])
        return png

    summed = run("none", "--max_sensitivity", str(SAMPLES), "--sensitivity_radius", str(RADIUS),
                 "--seed", str(SEED))
    normalised = run("minmax")
    # --layer_norm reaches the pictures' maps (it was ignored for few-shot)
    assert read_file(str(summed)).tolist() != read_file(str(normalised)).tolist()

    summary = json.loads((tmp_path / "none" / "sensitivity.json").read_text())
    model = load_model(ckpt, "cama.models.ProtoNet", torch.device("cpu"))
    batch, _, _ = folder_episode(str(support), [str(queries)], (32, 32))
    refs = model.episode_references(batch, model.feature_maps(batch["image"]))
    rows = [int(name.rsplit("query", 1)[1]) for name in summary["queries"]]
    assert sorted(rows) == refs.query_index.tolist()
    position = [refs.query_index.tolist().index(r) for r in rows]
    images = batch["image"][rows]
    expected = {}
    for norm in ("none", "minmax"):
        explainer = ModelExplainer(model, layers, layer_norm=norm)

        def map_of(image, b):
            q = position[b]
            return {"gradcam": episode_maps("gradcam", explainer, image, model.feature_maps(image)[0],
                                            refs.prototype[q : q + 1], refs.supports[q : q + 1], refs.metric,
                                            (32, 32))}

        expected[norm] = [row["gradcam"] for row in _naive_max_sensitivity(map_of, images, IMAGENET_STD)]
    assert summary["methods"]["gradcam"]["per_query"] == pytest.approx(expected["none"], rel=1e-3, abs=1e-6)
    assert expected["none"] != pytest.approx(expected["minmax"], rel=1e-2)  # the options matter here
