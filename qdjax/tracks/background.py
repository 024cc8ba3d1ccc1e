"""The movie's static background, read from the movie, and frames made flat with it.

In vivo the background is tissue: autofluorescence with structure (cells, fibres, vessel
walls) on the scale of a spot. A detector trained on flat backgrounds scores its bright
patches like QDs. The structure stays where it is from frame to frame while QDs move, so
the movie itself says what the background is:

1. the QDs are left out: discs around the detections the localiser is confident of
   (``tracking.without_background``): a QD that stays put is not background, while a bright
   patch of tissue the localiser only half-believes stays in, where it belongs;
2. per pixel, the mean over an even sample of frames of what is left (not the median:
   at the few photons a pixel of tissue gives, the median of Poisson counts is an integer
   that flattens the texture itself); smoothed by a 1 px Gaussian, normalised by the
   pixels seen (a pixel never free of QDs takes the background around it);
3. whether taking it out helps: the smoothed means of the sample's even and odd frames,
   each with its own noise, correlate only as far as the background has structure
   (tested on the pixels no detection came near in any sampled frame, so that a slow QD's
   dim trail is not taken for structure). With correlation r, the structure's variance
   is r / (1 - r) of one half's noise, and the whole sample's mean carries about half that
   noise: subtracting it removes more variance than it adds when r > 1/3;
4. where it has, each frame less the background plus its mean is what the localiser sees
   (``Flattened``, chunk by chunk): flat, with the QDs as they were.

A background that moves with the tissue is blurred in the mean; that part is not taken
out here (``registration`` reads the motion). docs/diffusion.md, section 9.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from qdjax.tracks import registration

SAMPLE_FRAMES = 128  # frames in the mean (evenly spaced over the movie)
MIN_FRAMES = 20  # fewer, and the mean is too noisy to subtract
MIN_TEST_PIXELS = 256  # fewer pixels free of QDs in every frame, and nothing is tested
MIN_CORRELATION = 1 / 3  # the halves' smoothed means: structure above the mean's noise
SMOOTH_PX = 1.0  # the background's smoothing, px
FILL_PX = 4.0  # the smoothing that fills pixels never free of QDs, px
MIN_COVER = 0.2  # below this share of seen pixels around a pixel, FILL_PX fills it


@dataclasses.dataclass(frozen=True)
class Background:
  """The movie's static background.

  Attributes:
    image: [h, w] the background (the frames' units).
    correlation: of the sample's even and odd frames' smoothed means over the field: near
      0 for a flat background, near 1 for strong structure.
    applied: whether the frames are flattened with it.
    reason: why or why not, in words.
  """

  image: np.ndarray
  correlation: float
  applied: bool
  reason: str

  def summary(self) -> dict:
    return {
      "applied": self.applied,
      "correlation": self.correlation,
      "relative_sd": float(np.std(self.image) / max(float(np.mean(self.image)), 1e-12)),
      "reason": self.reason,
    }


def _mean(frames: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Per-pixel mean of the valid pixels (NaN where none is)."""
  count = valid.sum(axis=0, dtype=np.float64)
  total = (frames * valid).sum(axis=0, dtype=np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):  # a pixel never free of QDs
    return np.where(count > 0, total / count, np.nan)


def _filled(mean: np.ndarray) -> np.ndarray:
  """The per-pixel mean smoothed by ``SMOOTH_PX``, normalised by the pixels seen; where too
  few were seen, the wider ``FILL_PX`` neighbourhood; the overall mean where nothing was."""
  from scipy import ndimage

  seen = np.isfinite(mean).astype(np.float64)
  if not seen.any():
    return np.zeros_like(mean, dtype=np.float64)
  known = np.where(seen > 0, mean, 0.0)
  cover = ndimage.gaussian_filter(seen, SMOOTH_PX, mode="nearest")
  near = ndimage.gaussian_filter(known, SMOOTH_PX, mode="nearest") / np.maximum(cover, 1e-12)
  wide_cover = ndimage.gaussian_filter(seen, FILL_PX, mode="nearest")
  wide = ndimage.gaussian_filter(known, FILL_PX, mode="nearest") / np.maximum(wide_cover, 1e-12)
  fallback = float(known.sum() / seen.sum())
  return np.where(cover > MIN_COVER, near, np.where(wide_cover > 1e-3, wide, fallback))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
  both = np.isfinite(a) & np.isfinite(b)
  if both.sum() < 16:
    return 0.0
  x, y = a[both] - a[both].mean(), b[both] - b[both].mean()
  denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
  return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def estimate(
  frames,
  exclude: pd.DataFrame | None = None,
  radius_px: float = 3.0,
  apply: bool | None = None,
  *,
  candidates: pd.DataFrame | None = None,
) -> Background:
  """The static background of a movie (module docstring).

  Args:
    frames: (T, H, W) movie (a memory map is read frame by frame for the sample only).
    exclude: positions (frame, x, y px) that are not background: the QDs' detections.
    radius_px: radius of the discs left out around them, px.
    apply: flatten with it: None, where the background has structure; True; False.
    candidates: positions also left out of the test of structure only (default
      ``exclude``): detections that may be QDs, so that dim QDs moving through the field
      cannot make a flat background look structured.

  Raises:
    ValueError: a movie that is not (T, H, W).
  """
  if getattr(frames, "ndim", 0) != 3:
    raise ValueError(f"a movie must be (T, H, W), got shape {getattr(frames, 'shape', ())}")
  t, h, w = frames.shape
  picked = np.unique(np.linspace(0, t - 1, min(t, SAMPLE_FRAMES)).round().astype(int))
  sample = np.asarray(frames[picked], np.float32)
  valid = registration.background_mask(picked, (h, w), exclude, radius_px)
  image = _filled(_mean(sample, valid))
  if len(picked) < MIN_FRAMES:
    correlation = 0.0
    structured, why = False, f"too few frames ({len(picked)} < {MIN_FRAMES}) to read it"
  else:
    if candidates is not None:
      valid = valid * registration.background_mask(picked, (h, w), candidates, radius_px)
    # Only pixels no QD came near in any sampled frame: a slow QD's trail, dim in the
    # frames where it scored below the cut, is no structure of the background.
    never = valid.min(axis=0) > 0
    if never.sum() < MIN_TEST_PIXELS:
      correlation, structured = 0.0, False
      why = f"too little background away from the QDs to test ({int(never.sum())} px)"
    else:
      even = np.arange(len(picked)) % 2 == 0
      halves = [_filled(np.where(never, _mean(sample[k], valid[k]), np.nan)) for k in (even, ~even)]
      correlation = _correlation(*[np.where(never, m, np.nan) for m in halves])
      structured = correlation >= MIN_CORRELATION
      why = (
        f"structured: the halves' means correlate (r = {correlation:.2f})"
        if structured
        else f"flat: the halves' means do not correlate (r = {correlation:.2f})"
      )
  applied = structured if apply is None else bool(apply)
  if apply is not None:
    why += "; flattened as asked" if apply else "; not flattened, as asked"
  return Background(image=image, correlation=correlation, applied=applied, reason=why)


class Flattened:
  """A movie less its static background, plus the background's mean, read lazily: slicing
  it reads the frames it covers (``frames[a:b]``), so a memory-mapped movie stays on disk."""

  def __init__(self, frames, background: Background):
    self.frames = frames
    self.offset = (background.image.mean() - background.image).astype(np.float32)
    self.shape = tuple(frames.shape)
    self.ndim = 3
    self.dtype = np.dtype(np.float32)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index):
    return np.asarray(self.frames[index], np.float32) + self.offset
