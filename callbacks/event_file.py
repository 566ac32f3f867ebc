"""``ImageEventFile``: a TensorBoard event file for pictures (and a few scalars), checksummed in C.

TensorBoard reads *event files*: TFRecord files of ``Event`` protobufs, each record framed as
``uint64 length | uint32 masked CRC32C of the length | data | uint32 masked CRC32C of the data``
(little-endian; masked: the CRC rotated right by 15 bits plus ``0xa282ead8``), the first event
being ``file_version = "brain.Event:2"``. The ``SummaryWriter`` behind Lightning's
``TensorBoardLogger`` computes those CRC32Cs in pure Python in its writer thread, holding the
interpreter lock: 60-100 ms for each explanation picture of the main job (450-740 KB of PNG),
during which the callbacks' own work stalls. This file computes them with ``google-crc32c`` (C,
0.3 ms for 700 KB) and writes synchronously.

Its pictures form their own TensorBoard run, in their own folder (``ImageSink`` uses
``<logger.log_dir>/<folder>``): two event files appended to at once in one run folder are not
read reliably (TensorBoard's Python loader polls only the newest file of a run). All events of one
process go to one file in that folder (``events.out.tfevents.<ns>.<host>.<pid>.images``, found again
by its host and pid), so the folder holds one file per process that wrote pictures, as TensorBoard
expects; each write opens, appends and closes it, so a crash loses nothing written before it.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import google_crc32c
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

__all__ = ["ImageEventFile", "masked_crc32c"]

SUFFIX = "images"


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C of a TFRecord frame (module docstring)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class ImageEventFile:
    """The event file of this process in ``directory`` (created on the first write).

    Args:
        directory: the run folder the pictures go to (created when missing).
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        """The file: this process's existing one in ``directory``, else a new one (with its
        ``file_version`` event)."""
        if self._path is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            owner = f"{socket.gethostname()}.{os.getpid()}.{SUFFIX}"
            mine = sorted(self.directory.glob(f"events.out.tfevents.*.{owner}"))
            if mine:
                self._path = mine[-1]
            else:
                self._path = self.directory / f"events.out.tfevents.{time.time_ns()}.{owner}"
                first = Event(wall_time=time.time(), file_version="brain.Event:2")
                self._path.write_bytes(_record(first.SerializeToString()))
        return self._path

    def add_png(self, tag: str, png: bytes, height: int, width: int, channels: int, step: int) -> None:
        """Append the image summary ``add_image`` would write: ``png`` under ``tag`` at ``step``."""
        image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        event = Event(wall_time=time.time(), step=int(step), summary=summary)
        with open(self.path, "ab") as handle:
            handle.write(_record(event.SerializeToString()))

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Append one event with a scalar summary per ``tag: value`` of ``values`` at ``step``."""
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        event = Event(wall_time=time.time(), step=int(step), summary=summary)
        with open(self.path, "ab") as handle:
            handle.write(_record(event.SerializeToString()))
