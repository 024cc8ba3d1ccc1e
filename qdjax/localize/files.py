"""Localise QDs in a user's frames with any method, streaming a stack of any length.

``locate_file`` reads .npy/.npz/.tif stacks lazily (``qdjax.io``), runs a locator
(``qdjax.localize.locator``: 'model', 'trackpy' or 'mle', built by ``locator.make``) on chunks of
``chunk`` frames, so memory stays bounded by one chunk whatever the stack's length, and
streams ``frame,x,y,score`` rows into a CSV that is renamed into place only when complete.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from qdjax import io
from qdjax.localize import locator

DEFAULT_MIN_SCORE = locator.DEFAULT_MIN_SCORE  # what each method's score means: there


def _rows(
  frames, locate: locator.Locator, chunk: int, min_score: float, keep: list, bar, source: str
) -> Iterator[tuple[int, float, float, float]]:
  for start, block in io.iter_chunks(frames, chunk, source=source):
    detections = locate(block, progress=bar)
    for offset, found in enumerate(detections):
      found = np.asarray(found, np.float64).reshape(-1, 3)
      found = found[found[:, 2] >= min_score]
      if len(keep) < 32:
        keep.append((block[offset], found))
      for x, y, score in found[np.argsort(-found[:, 2], kind="stable")]:
        yield start + offset, x, y, score


def check_arguments(
  input_path: str, output_path: str, min_score: float, plot_path: str | None = None
) -> None:
  """Refuses, before any work, what ``locate_file`` could not do safely.

  Raises:
    FileNotFoundError: no input file, or no directory for an output.
    IsADirectoryError: an output is a directory.
    ValueError: an output is the input (or the other output), or ``min_score`` is NaN.
  """
  if math.isnan(min_score):
    raise ValueError("min_score must be a number, got nan")
  if not Path(input_path).is_file():
    raise FileNotFoundError(f"no such input file: {input_path}")
  io.check_output_path(output_path, inputs=[input_path])
  if plot_path is not None:
    io.check_output_path(plot_path, inputs=[input_path, output_path])


def locate_file(
  input_path: str,
  output_path: str,
  locate: locator.Locator,
  *,
  chunk: int = 4096,
  min_score: float = -np.inf,
  plot_path: str | None = None,
  progress: bool = True,
  layout: str = "auto",
) -> int:
  """Localises every frame of ``input_path`` and writes ``output_path`` (CSV).

  Rows are sorted by frame, then by descending score within a frame.

  ``layout`` says how to read an (h, w, 3 or 4) array, which ``io.open_frames`` refuses as
  ambiguous unless told: 'channels' (each channel a frame) or 'stack'.

  Returns:
    the number of frames processed.

  Raises:
    FileNotFoundError, IsADirectoryError, ValueError: bad input (missing file, wrong rank,
      NaN pixels, an output that is a directory or the input, ...); nothing is written then.
  """
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  check_arguments(input_path, output_path, min_score, plot_path)
  frames = io.open_frames(input_path, layout=layout)
  keep: list = []
  with tqdm(total=len(frames), unit="frame", disable=not progress, desc="locate") as bar:
    rows = _rows(frames, locate, chunk, min_score, keep, bar, str(input_path))
    io.write_localisations(output_path, rows)
  if plot_path is not None and keep:
    from qdjax import plotting  # matplotlib: imported only to draw (a second of start-up)

    images = [k[0] for k in keep]
    plotting.contact_sheet(images, plot_path, detections=[k[1] for k in keep])
  return len(frames)
