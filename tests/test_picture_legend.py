"""Every picture carries a one-line legend at its bottom, and is otherwise the same pixels."""

from __future__ import annotations

import torch

from cama.viz import probe_grid, ranking_figure
from cama.viz.episodes import episode_grid
from cama.viz.labels import line_height, load_font, text_band
from cama.viz.layout import display_scale
from cama.viz.pictures import legend_line


def probes(count: int = 2, maps: int = 3):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 48, 24), dtype=torch.uint8, generator=generator)
    return images, images.flip(0), torch.rand(count, maps, 48, 24, generator=generator)


def expected_band(picture_width: int, text: str) -> torch.Tensor:
    """The legend band computed here: the text line in the largest font size (from the picture's
    down to 9 pixels) whose text fits between the paddings, then the padding."""
    scale = display_scale(48, 24)
    sizes = range(scale.font_size, 8, -1)
    size = next((s for s in sizes if load_font(s).getlength(text) <= picture_width - 2 * scale.padding), 9)
    font = load_font(size)
    band = text_band([(scale.padding, picture_width - scale.padding, text)], picture_width, line_height(font), font,
                     align="left")
    return torch.cat([band, torch.full((3, scale.padding, picture_width), 255, dtype=torch.uint8)], dim=1)


def check(with_legend: torch.Tensor, without: torch.Tensor, text: str) -> None:
    height = without.shape[1]
    assert with_legend.shape[2] == without.shape[2] and with_legend.shape[1] > height
    assert torch.equal(with_legend[:, :height], without)  # the rest is the same pixels
    band = with_legend[:, height:]
    assert torch.equal(band, expected_band(without.shape[2], text))
    assert (band < 128).any()  # there is text


def test_probe_grid_legend_names_what_the_picture_shows():
    images, references, maps = probes()
    matches, distances, boxes = torch.tensor([True, False]), torch.tensor([0.5, 1.25]), torch.tensor([[2, 2, 20, 40]] * 2)
    kwargs = {"probe_boxes": boxes, "distances": distances, "title": "epoch 1 · val · ram"}
    with_legend = probe_grid(images, references, maps, maps, matches, **kwargs)
    without = probe_grid(images, references, maps, maps, matches, **kwargs, legend=False)
    text = legend_line(matches=True, boxes=True, distances=True)
    assert text == ("frame green/red: true/false match · white box: ground truth · d: distance · "
                    "each map min-max normalised (0-1)")
    check(with_legend, without, text)


def test_ranking_and_episode_pictures_get_the_legend_of_what_they_show():
    images, _, maps = probes(count=4)
    matches = torch.tensor([True, False, True])
    distances = torch.tensor([0.25, 0.5, 0.75])
    with_legend = ranking_figure(images[0], images[1:], matches, maps[0], maps[1:], distances=distances)
    without = ranking_figure(images[0], images[1:], matches, maps[0], maps[1:], distances=distances, legend=False)
    check(with_legend, without, "frame green/red: true/false match · d: distance · each map min-max normalised (0-1)")
    pictures = {"probe_images": images[:2], "reference_images": images[2:], "matches": matches[:2],
                "ram": maps[:2, 0], "ram/reference": maps[2:, 0]}
    episode = episode_grid(pictures, "ram")  # few-shot: no distances, no boxes
    plain = probe_grid(images[:2], images[2:], maps[:2, :1], maps[2:, :1], matches[:2], names=("query", "support"),
                       legend=False)
    check(episode, plain, "frame green/red: true/false match · each map min-max normalised (0-1)")
