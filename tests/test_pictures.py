"""The pictures explain themselves: headers, captions, a colour bar, frames that survive TensorBoard's
0.4x card view, a gap after the query, the epoch in the title, one README text per run."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.io import decode_png, read_file

from callbacks.explanation_images import ExplanationImages
from cama.explain import colorize
from cama.viz import GREEN, RED, picture_title, probe_grid, ranking_figure
from cama.viz.labels import colorbar, load_font, text_band
from cama.viz.layout import display_scale, sheet
from cama.viz.pictures import heat_overlays



def constant(count: int, color: tuple[int, int, int], height: int = 64, width: int = 32) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.uint8)[None, :, None, None].expand(count, 3, height, width).clone()


def columns_of(picture: torch.Tensor, color: tuple[int, int, int]) -> torch.Tensor:
    """x positions where some pixel has exactly ``color``."""
    hit = (picture == torch.tensor(color, dtype=torch.uint8)[:, None, None]).all(dim=0)
    return hit.any(dim=0).nonzero().squeeze(1)


def rows_of(picture: torch.Tensor, color: tuple[int, int, int]) -> torch.Tensor:
    hit = (picture == torch.tensor(color, dtype=torch.uint8)[:, None, None]).all(dim=0)
    return hit.any(dim=1).nonzero().squeeze(1)


def near(picture: torch.Tensor, color: tuple[int, int, int], tolerance: float = 2.0) -> bool:
    return bool(((picture.float() - torch.tensor(color, dtype=torch.float)[:, None, None]).abs() <= tolerance).all(0).any())


def test_tiles_are_upscaled_to_at_least_128_pixels_high_with_the_nearest_neighbour():
    probes = torch.randint(10, 256, (2, 3, 48, 24), dtype=torch.uint8)
    probes[0, :, 0, 0] = torch.tensor([1, 2, 3])  # marks the first probe's top-left corner
    picture = probe_grid(probes, constant(2, (7, 180, 250), 48, 24), torch.rand(2, 3, 48, 24), torch.rand(2, 3, 48, 24))
    top, left = int(rows_of(picture, (1, 2, 3))[0]), int(columns_of(picture, (1, 2, 3))[0])
    expected = F.interpolate(probes[:1].float(), scale_factor=3, mode="nearest").to(torch.uint8)[0]  # 144 x 72
    assert torch.equal(picture[:, top : top + 144, left : left + 72], expected)
    assert len(rows_of(picture, (7, 180, 250))) == 2 * 144  # both references, 3x


def frame_width(height: int) -> tuple[int, torch.Tensor]:
    """The green frame's width on a ``height``-high reference (a row through its middle), and the picture."""
    grey = constant(2, (128, 128, 128), height, height // 2)
    maps = torch.zeros(2, 1, height, height // 2)
    picture = probe_grid(grey, grey, maps, maps, torch.tensor([True, False]))
    green_rows = rows_of(picture, GREEN)
    middle = (int(green_rows[0]) + int(green_rows[-1])) // 2
    return len(columns_of(picture[:, middle : middle + 1], GREEN)) // 2, picture


@pytest.mark.parametrize("height", [64, 128, 256])
def test_frames_survive_a_0_4x_view(height):
    width, picture = frame_width(height)
    assert width * 0.4 >= 2  # two full pixels of frame after the downscale
    small = F.interpolate(picture[None].float(), scale_factor=0.4, mode="area")[0]
    assert near(small, GREEN) and near(small, RED)


def test_frame_width_is_proportional_to_the_tile():
    assert abs(frame_width(256)[0] - 2 * frame_width(128)[0]) <= 1  # up to rounding
    assert frame_width(64)[0] == frame_width(128)[0]  # 64-pixel images become 128-pixel tiles


def test_ground_truth_boxes_survive_a_0_4x_view_on_every_side():
    images = constant(1, (128, 128, 128), 128, 64)
    maps = torch.linspace(0, 1, 128)[None, :, None].expand(1, 128, 64)
    tile = heat_overlays(images, maps, boxes=torch.tensor([[9.0, 17.0, 55.0, 111.0]]), scale=display_scale(128, 64))
    small = F.interpolate(tile.float(), scale_factor=0.4, mode="area")[0]
    white = (small >= 250).all(dim=0)  # only the box is white: a 50% overlay on grey never is
    ys, xs = white.nonzero().unbind(1)
    assert white.any() and xs.min() <= 9 * 0.4 + 1 and xs.max() >= 55 * 0.4 - 2
    assert ys.min() <= 17 * 0.4 + 1 and ys.max() >= 111 * 0.4 - 2


def test_header_band_holds_text_over_each_labelled_column_and_has_the_height_of_a_text_line():
    scale = display_scale(128, 64)
    tiles = constant(6, (7, 180, 250), 128, 64).reshape(2, 3, 3, 128, 64)
    bare = sheet(tiles, scale, colormap=None)
    headed = sheet(tiles, scale, headers=["probe", "", "sum"], colormap=None)
    font = load_font(scale.font_size)
    band = headed.shape[1] - bare.shape[1]
    assert font.getbbox("probe")[3] <= band <= 2 * font.size  # one line of text
    tile_top = int(rows_of(headed, (7, 180, 250))[0])
    assert tile_top == int(rows_of(bare, (7, 180, 250))[0]) + band
    x = columns_of(headed, (7, 180, 250))
    starts = [int(x[0])] + [int(b) for a, b in zip(x[:-1], x[1:]) if b > a + 1]
    header = headed[:, :tile_top]
    inked = [bool((header[:, :, s : s + 64] < 128).any()) for s in starts]
    assert inked == [True, False, True]  # dark pixels where a label is, none over the empty header


def test_gap_after_the_query_is_background_and_wider_than_the_padding():
    query, gallery = constant(1, (10, 200, 10), 128, 64)[0], constant(3, (200, 10, 200), 128, 64)
    figure = ranking_figure(query, gallery, None, torch.zeros(2, 128, 64), torch.zeros(3, 2, 128, 64))
    q_x, g_x = columns_of(figure, (10, 200, 10)), columns_of(figure, (200, 10, 200))
    rows = rows_of(figure, (10, 200, 10))
    gap = figure[:, int(rows[0]) : int(rows[-1]) + 1, int(q_x[-1]) + 1 : int(g_x[0])]
    assert gap.numel() and (gap == 255).all()
    between = [int(b - a - 1) for a, b in zip(g_x[:-1], g_x[1:]) if b > a + 1]  # padding between gallery tiles
    assert gap.shape[2] > 2 * max(between)


def test_colour_bar_is_the_overlays_colour_map_from_0_to_1():
    for name in ("jet", "turbo"):
        font = load_font(14)
        band = colorbar(600, 10, font, name)
        row = band[:, band.shape[1] // 2]
        coloured = (row[0] != row[1]) | (row[1] != row[2])  # background and text are grey
        xs = coloured.nonzero().squeeze(1)
        bar = row[:, int(xs[0]) : int(xs[-1]) + 1]
        expected = colorize(torch.linspace(0, 1, bar.shape[1])[None, None], name)[0, :, 0]
        assert torch.equal(bar, expected.mul(255).round().to(torch.uint8))
        assert 250 <= bar.shape[1] <= 350  # the middle half of the width


def test_captions_and_row_labels_add_text_under_the_tiles_and_left_of_the_rows():
    query, gallery = constant(1, (10, 200, 10), 128, 64)[0], constant(2, (200, 10, 200), 128, 64)
    maps = torch.zeros(1, 128, 64), torch.zeros(2, 1, 128, 64)
    plain = ranking_figure(query, gallery, None, *maps)
    labelled = ranking_figure(query, gallery, None, *maps, query_label="id 3", gallery_labels=["id 3", "id 4"],
                              distances=torch.tensor([0.5, 1.5]))
    assert labelled.shape[1] > plain.shape[1]  # a caption band of two lines
    bottom = int(rows_of(labelled, (10, 200, 10))[-1])
    x = columns_of(labelled, (200, 10, 200))
    under = labelled[:, bottom + 1 : bottom + 40, int(x[0]) : int(x[-1]) + 1]
    assert (under < 128).any()
    left = labelled[:, :, : int(columns_of(labelled, (10, 200, 10))[0])]
    assert (left < 128).any()  # the row labels ("images", "map")


def test_the_title_carries_the_epoch_and_is_the_only_difference_between_epochs():
    images, maps = constant(2, (7, 180, 250)), torch.rand(2, 3, 64, 32)
    assert picture_title("ram", 7) == "epoch 7 · val · ram"
    first = probe_grid(images, images, maps, maps, title=picture_title("ram", 1))
    second = probe_grid(images, images, maps, maps, title=picture_title("ram", 2))
    differ = (first != second).any(dim=0).any(dim=1).nonzero().squeeze(1)
    assert first.shape == second.shape and differ.numel() > 0
    assert int(differ.max()) < int(rows_of(first, (7, 180, 250))[0])  # above the first tile: the title line


def test_text_fits_its_span():
    font = load_font(14)
    band = text_band([(0, 40, "a very long label that cannot fit")], 100, 20, font)
    assert (band[:, :, 40:] == 255).all() and (band[:, :, :40] < 128).any()


# --------------------------------------------------------------------------------------------------
# the README text, once per run, TensorBoard only
# --------------------------------------------------------------------------------------------------
def run_validations(model, datamodule, callback, logger, tmp_path, times: int) -> None:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=[callback], default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(times):
            trainer.validate(model, datamodule=datamodule, verbose=False)


def test_readme_is_written_once_per_run_to_tensorboard_and_pngs_match_the_images(tmp_path):
    from tests.test_callbacks import TINY_DATA
    from cama.models import CAMA
    from datamodules import ReIDDataModule

    datamodule = ReIDDataModule(**TINY_DATA)
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = CAMA(num_classes=datamodule.num_classes, backbone="resnet10", num_branches=2).eval()
    callback = ExplanationImages(methods=["ram"], num_probes=2, num_ranking_queries=1, top_k=3, save_png=True)
    logger = TensorBoardLogger(tmp_path, name="tb")
    run_validations(model, datamodule, callback, logger, tmp_path, times=2)
    logger.experiment.flush()
    texts = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})  # the logger's run
    texts.Reload()
    readme = [t for t in texts.Tags()["tensors"] if t.startswith("explanations/README")]
    assert len(readme) == 1 and len(texts.Tensors(readme[0])) == 1
    text = texts.Tensors(readme[0])[0].tensor_proto.string_val[0].decode()
    # the pictures: their own run, <log_dir>/explanations (callbacks.event_file)
    accumulator = EventAccumulator(str(Path(logger.log_dir) / "explanations"), size_guidance={"images": 0})
    accumulator.Reload()
    assert len(accumulator.Images("explanations/ram")) == 2
    assert "explanations/ranking/query_<j>" in text and "branch" in text
    png = decode_png(read_file(callback.last_written[0]))  # the PNG of the last epoch is the logged picture
    logged = decode_png(torch.frombuffer(bytearray(accumulator.Images("explanations/ram")[-1].encoded_image_string),
                                         dtype=torch.uint8))
    assert torch.equal(png, logged)
    event = accumulator.Images("explanations/ram")[-1]
    assert (event.height, event.width) == tuple(png.shape[1:])  # the summary's size is the picture's

    csv = ExplanationImages(methods=["ram"], num_probes=2, num_ranking_queries=0)
    run_validations(model, datamodule, csv, CSVLogger(tmp_path, name="csv"), tmp_path, times=1)
    assert csv.last_written and all(p.endswith(".png") for p in csv.last_written)
