"""The pictures' own TensorBoard event file (callbacks.event_file): TensorBoard reads it back."""

from __future__ import annotations

import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c

from callbacks.event_file import ImageEventFile, masked_crc32c


@pytest.mark.parametrize("length", [0, 1, 8, 255, 4096])
def test_masked_crc32c_is_tensorboards(length):
    """The C checksum equals TensorBoard's own pure-Python one (an independent implementation)."""
    data = os.urandom(length)
    assert masked_crc32c(data) == tensorboard_masked_crc32c(data)


def test_tensorboard_reads_the_pictures_of_every_epoch_from_one_file(tmp_path):
    pngs = [b"\x89PNG first" + os.urandom(300), b"\x89PNG second" + os.urandom(500)]
    ImageEventFile(tmp_path / "run").add_png("explanations/ram", pngs[0], 12, 34, 3, step=5)
    # the next epoch's sink builds a new object: it appends to the same file
    later = ImageEventFile(tmp_path / "run")
    later.add_png("explanations/ram", pngs[1], 12, 34, 3, step=9)
    later.add_png("explanations/fam", pngs[0], 56, 78, 3, step=9)
    assert [p.name for p in (tmp_path / "run").iterdir()] == [later.path.name]
    accumulator = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    accumulator.Reload()
    assert accumulator.Tags()["images"] == ["explanations/ram", "explanations/fam"]
    ram = accumulator.Images("explanations/ram")
    assert [(e.step, e.encoded_image_string, e.height, e.width) for e in ram] == [
        (5, pngs[0], 12, 34), (9, pngs[1], 12, 34)
    ]
    assert [(e.step, e.height, e.width) for e in accumulator.Images("explanations/fam")] == [(9, 56, 78)]


def test_a_corrupt_record_is_not_read(tmp_path):
    """The checksums are checked on reading: a flipped byte of the picture loses that record."""
    events = ImageEventFile(tmp_path)
    events.add_png("explanations/ram", b"\x89PNG" + bytes(200), 4, 4, 3, step=1)
    data = bytearray(events.path.read_bytes())
    data[-10] ^= 0xFF
    events.path.write_bytes(bytes(data))
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    accumulator.Reload()
    assert "explanations/ram" not in accumulator.Tags()["images"]
