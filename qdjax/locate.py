"""Localise QDs in a user's frames with any method, streaming a stack of any length.

``locate_file`` reads .npy/.npz/.tif stacks lazily (``qdjax.io``), runs the locator on
chunks of ``chunk`` frames, so memory stays bounded by one chunk whatever the stack's
length, and streams ``frame,x,y,score`` rows into a CSV that is renamed into place only
when complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from qdjax import io, plotting

METHODS = ("model", "trackpy", "mle")
# The --model flag's help, shared by the scripts that take it.
MODEL_HELP = (
  "Shipped model for --method=model: 'general' (many photon levels, Poisson and PMT frames, "
  "whole fields) or 'paper' (the study's preset only); default: general where shipped, else "
  "paper."
)

Locator = Callable[[np.ndarray], list]


def make_locator(
  method: str, workdir: str | None = None, preset: str = "paper", model: str | None = None
) -> Locator:
  """A callable ``images [n, h, w] -> list of [k, 3] (x, y, score)`` per frame.

  Args:
    method: 'model' (the Flax detector: from ``workdir``, or a model shipped with qdjax),
      'trackpy' (the settings chosen on validation data for ``preset``), or 'mle' (Poisson
      maximum-likelihood Gaussian fit).
    workdir: a training workdir, for 'model' only.
    preset: whose tuned trackpy settings to use.
    model: a shipped model's name (``inference.MODELS``), for 'model' without ``workdir``;
      default ``inference.default_model()``: 'general' where shipped, else 'paper'.
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
  if workdir is not None and method != "model":
    raise ValueError(f"--workdir is for --method=model, not {method}")
  if model is not None and method != "model":
    raise ValueError(f"--model is for --method=model, not {method}")
  if model is not None and workdir is not None:
    raise ValueError(f"give --model={model} or --workdir, not both")
  if method == "model":
    from qdjax import inference

    return inference.load(workdir, model=model)
  from qdjax import baselines, presets

  return baselines.make(method, preset=presets.get(preset))


def _rows(
  frames, locator: Locator, chunk: int, min_score: float, keep: list, bar
) -> Iterator[tuple[int, float, float, float]]:
  for start, block in io.iter_chunks(frames, chunk):
    detections = locator(block)
    for offset, found in enumerate(detections):
      found = np.asarray(found, np.float64).reshape(-1, 3)
      found = found[found[:, 2] >= min_score]
      if len(keep) < 32:
        keep.append((block[offset], found))
      for x, y, score in found[np.argsort(-found[:, 2], kind="stable")]:
        yield start + offset, x, y, score
    bar.update(len(block))


def locate_file(
  input_path: str,
  output_path: str,
  locator: Locator,
  *,
  chunk: int = 4096,
  min_score: float = -np.inf,
  plot_path: str | None = None,
  progress: bool = True,
) -> int:
  """Localises every frame of ``input_path`` and writes ``output_path`` (CSV).

  Rows are sorted by frame, then by descending score within a frame.

  Returns:
    the number of frames processed.

  Raises:
    FileNotFoundError, ValueError: bad input (missing file, wrong rank, NaN pixels, ...);
      nothing is written then.
  """
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  io.check_output_path(output_path)
  frames = io.open_frames(input_path)
  keep: list = []
  with tqdm(total=len(frames), unit="frame", disable=not progress, desc="locate") as bar:
    io.write_localisations(output_path, _rows(frames, locator, chunk, min_score, keep, bar))
  if plot_path is not None and keep:
    images = [k[0] for k in keep]
    plotting.contact_sheet(images, plot_path, detections=[k[1] for k in keep])
  return len(frames)
