"""The one contract every localiser meets, and the names that build them.

A locator is any callable with this signature (a ``typing.Protocol``, as jax-md's
``space.py`` writes down its displacement functions):

    locator(images, progress=None) -> detections
      images:     [n, h, w] float32 frames (photon counts).
      progress:   optional tqdm-like bar; the locator advances it by frames as it goes.
      detections: list of n float arrays [k_i, 3], rows (x, y, score) in px (the centre of
                  pixel (row 0, column 0) is (0, 0), x = column), k_i >= 0.

A higher score means more confidence: the metric ranks all detections by it. The three
methods are ``qdjax.detect.inference.Locator`` ('model', the trained detector),
``qdjax.localize.trackpy.Locator`` ('trackpy') and ``qdjax.localize.mle.Locator``
('mle'); ``make`` builds one by name. Evaluation, ``locate`` and tracking call only this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

METHODS = ("model", "trackpy", "mle")
# The --model flag's help, shared by the scripts that take it.
MODEL_HELP = (
  "Shipped model for --method=model: 'general_fast' (many photon levels, Poisson and PMT "
  "frames, whole fields; fast), 'general' (the same prior on the larger, slower network), "
  "'paper_fast' (the study's preset only; fast) or 'paper' (the study's preset only; the "
  "full-accuracy reference, slow on whole fields); default: general_fast where shipped."
)


# What a method's score means, and the least score ``experiments/locate.py`` keeps by default (and
# tracking keeps where a movie's scores do not split, ``default_min_score``)
# (measured on 400 frames per case of the calibrated paper preset, simulated apart from
# every test split, matching within 2 px):
# - model: about the probability that a QD lies within 1 px: the presence probability
#   summed over a 3 x 3 window times the predicted P(position error < 1 px). Top scores of
#   empty frames: median 0.13, 99th percentile 0.41; 0.25 keeps recall 0.90 (precision
#   0.94) at D1 and 0.56 at D3, with 0.16 false alarms per empty frame; 0.5 would keep only
#   0.36 at D1, as a blurred QD's position is rarely certain to 1 px.
# - trackpy: trackpy's mass (background-subtracted counts in the feature's mask); its own
#   minmass, chosen on validation data, already applies, so nothing more is cut.
# - mle: the log-likelihood ratio of a fitted spot against a flat background (nats).
#   Empty frames reach llr >= 2 in 62% of frames, >= 5 in 31%, >= 10 in 1%; at D1 the
#   recall is 0.815 / 0.810 / 0.657 at those cuts. 5 halves the false alarms for almost
#   no recall.
DEFAULT_MIN_SCORE = {"model": 0.25, "trackpy": -math.inf, "mle": 5.0}
# The least score at which a detection is taken for a QD with confidence (the QDs left out
# when the movie's static background is read, ``qdjax.tracks.background``): model, a
# presence probability within 1 px of one half; mle, a log-likelihood ratio that 1% of
# empty frames reach; trackpy, whose mass has no fixed scale, none beyond the movie's cut.
CONFIDENT_SCORE = {"model": 0.5, "trackpy": -math.inf, "mle": 10.0}


class Progress(Protocol):
  """What a locator needs of a progress bar (tqdm has it)."""

  def update(self, n: int = 1) -> object: ...


class Locator(Protocol):
  """images [n, h, w] -> list of n [k, 3] (x, y, score); see the module docstring."""

  def __call__(self, images: np.ndarray, progress: Progress | None = None) -> list[np.ndarray]: ...


def default_min_score(locate) -> float | None:
  """The least score worth keeping from this localiser when nothing else says where
  (``DEFAULT_MIN_SCORE`` of its ``method`` attribute); None for a localiser that cuts its
  own detections (trackpy) or one not named there."""
  cut = DEFAULT_MIN_SCORE.get(getattr(locate, "method", None))
  return None if cut is None or not math.isfinite(cut) else float(cut)


def confident_score(locate) -> float | None:
  """``CONFIDENT_SCORE`` of this localiser's ``method`` (None where it has none)."""
  cut = CONFIDENT_SCORE.get(getattr(locate, "method", None))
  return None if cut is None or not math.isfinite(cut) else float(cut)


def check_method(method: str, known: Sequence[str] = METHODS) -> str:
  """Returns ``method`` if it is one of ``known``; raises a one-line ValueError if not."""
  if method not in known:
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(known)}")
  return method


def parse_methods(text: str | Sequence[str], known: Sequence[str] = METHODS) -> list[str]:
  """'trackpy, mle,trackpy' -> ['trackpy', 'mle'] (each once, in order; '' -> []), checking
  every name against ``known``."""
  names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
  return list(dict.fromkeys(check_method(name, known) for name in names))


def check_model_arguments(method: str, workdir=None, model: str | None = None) -> None:
  """A known method, and a workdir or shipped model only for 'model', never both.

  Raises:
    ValueError: naming the argument that does not fit.
  """
  check_method(method)
  if workdir is not None and method != "model":
    raise ValueError(f"workdir is for method 'model', not {method!r}")
  if model is not None and method != "model":
    raise ValueError(f"model is for method 'model', not {method!r}")
  if model is not None and workdir is not None:
    raise ValueError(f"give model={model!r} or workdir, not both")


def make(
  method: str,
  *,
  workdir=None,
  model: str | None = None,
  preset=None,
  trackpy_settings=None,
  workers: int | None = None,
  **mle_options,
) -> Locator:
  """A locator by name.

  Args:
    method: 'model' (the Flax detector: the best checkpoint of ``workdir``, or a model
      shipped with qdjax), 'trackpy', or 'mle' (Poisson maximum-likelihood Gaussian fit).
    workdir: a training workdir or exported model directory, for 'model' only.
    model: a shipped model's name (``inference.MODELS``), for 'model' without ``workdir``;
      default ``inference.default_model()``: 'general_fast' where shipped.
    preset: a ``presets.Preset``: for trackpy without ``trackpy_settings``, its
      calibrated settings when it has them (trackpy's defaults otherwise).
    trackpy_settings: ``trackpy.Settings`` or a dict of them.
    workers: trackpy worker processes (None: by core count).
    **mle_options: fields of ``mle.Config`` (e.g. score='llr').

  Raises:
    ValueError: an unknown method, bad settings, or a workdir for another method.
    FileNotFoundError: no such workdir (or no shipped weights).
  """
  check_model_arguments(method, workdir, model)
  if method == "model":
    from qdjax.detect import inference

    return inference.load(workdir, model=model)
  if method == "trackpy":
    from qdjax.localize import trackpy

    settings = trackpy_settings
    if settings is None and preset is not None and preset.calibration:
      settings = preset.calibration.get("trackpy_settings")
    if isinstance(settings, dict):
      settings = trackpy.Settings(**settings)
    return trackpy.Locator(settings, workers=workers)
  from qdjax.localize import mle

  return mle.Locator(mle.Config(**mle_options))
