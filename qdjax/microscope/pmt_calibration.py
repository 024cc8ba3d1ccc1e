"""The photomultiplier calibrated from uniform frames (docs/spec.md, section 7).

``calibrate_pmt``: the PMT's alpha (gain 3/alpha), dark noise and offset from a stack of
uniform frames, by the mean-variance line of the PMT model in ``qdjax.sim.detector``.
``write_pmt`` and ``load_pmt`` keep a calibration as JSON; ``qdjax.microscope.fit`` uses it to fit
the microscope to PMT frames.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from qdjax import io

# A frame counts as clipped at the stack's extreme value when this fraction of its pixels
# sits exactly there: a tail that is cut piles up on the cut, a free tail reaches its
# extreme at a handful of pixels.
CLIP_PILEUP = 1e-3
# Clipped pixels are masked in a frame with at most this fraction of them. Cutting the
# top 0.1 % of a Gaussian lowers its variance by ~1 %; more would bias the line, so a frame
# clipped further is left out of the fit.
MAX_CLIPPED = 1e-3
# A frame is uniform when the variance of its block means, beyond what pixel noise gives,
# is at most this fraction of the pixel variance (illumination structure would add to the
# PMT's variance and tilt the line).
MAX_STRUCTURE = 0.05
BLOCK = 8
# The lowest-mean frame is the laser-off frame when its skewness is consistent with 0:
# Gaussian dark noise has none, and any frame with photons is skewed by the Gamma pulses.
DARK_SKEW_Z = 5.0


@dataclasses.dataclass(frozen=True)
class PmtCalibration:
  """A PMT fitted from uniform frames (output units: whatever the frames hold, a.u.).

  Attributes:
    alpha: Gamma rate per output unit; gain = 3/alpha output units per photon.
    dark_sigma: dark-noise standard deviation.
    offset: dark-noise mean (the output with no photon).
    standard_errors: {'alpha', 'gain', 'dark_sigma', 'offset', 'slope', 'intercept'}.
    frames: one dict per input frame: mean, variance, clipped fraction, structure, used.
    dark_frame: index of the laser-off frame, or None.
    reduced_chi2: of the weighted line fit (about 1 when the PMT model holds).
  """

  alpha: float
  dark_sigma: float
  offset: float
  standard_errors: dict[str, float]
  frames: list[dict[str, Any]]
  dark_frame: int | None
  reduced_chi2: float

  @property
  def gain(self) -> float:
    return 3.0 / self.alpha

  def to_dict(self) -> dict[str, Any]:
    return {
      "alpha": self.alpha,
      "gain": self.gain,
      "dark_sigma": self.dark_sigma,
      "offset": self.offset,
      "standard_errors": self.standard_errors,
      "dark_frame": self.dark_frame,
      "reduced_chi2": self.reduced_chi2,
      "frames": self.frames,
      "model": "output = offset + Gamma(3n, alpha) + N(0, dark_sigma^2), n ~ Poisson(e): "
      "variance = (4/alpha) (mean - offset) + dark_sigma^2",
    }


def _frame_moments(frame: np.ndarray, low: float, high: float, clip_low: bool, clip_high: bool):
  """Mean, variance, their sampling variances, skewness z, clipped fraction, structure."""
  clipped = np.zeros(frame.shape, bool)
  if clip_high:
    clipped |= frame >= high
  if clip_low:
    clipped |= frame <= low
  values = frame[~clipped]
  n = values.size
  mean = values.mean()
  centred = values - mean
  var = (centred**2).mean()
  m3 = (centred**3).mean()
  m4 = (centred**4).mean()
  h, w = frame.shape
  hb, wb = h // BLOCK, w // BLOCK
  structure = 0.0
  if hb * wb >= 4 and var > 0:
    blocks = np.where(clipped, mean, frame)[: hb * BLOCK, : wb * BLOCK]
    block_means = blocks.reshape(hb, BLOCK, wb, BLOCK).mean(axis=(1, 3))
    # Block means of pure noise vary by var / BLOCK^2; the excess is illumination.
    structure = max(0.0, block_means.var(ddof=1) - var / BLOCK**2) / var
  return {
    "mean": float(mean),
    "variance": float(var),
    "mean_var": float(var / n),
    "variance_var": float(max(m4 - var**2, 2 * var**2 / 10) / n),
    "skew_z": float(m3 / var**1.5 / math.sqrt(6 / n)) if var > 0 else 0.0,
    "clipped": float(clipped.mean()),
    "structure": float(structure),
    "pixels": int(n),
  }


def calibrate_pmt(
  frames,
  dark_frame: int | str | None = "auto",
  offset: float | None = None,
  saturation: float | None = None,
) -> PmtCalibration:
  """Fits the PMT's mean-variance line to uniform frames (docs/spec.md, section 7).

  Each frame is one laser power over a uniform sample. Under the PMT model a frame of
  mean photon level e has mean ``offset + 3e/alpha`` and variance
  ``(4/alpha)(mean - offset) + dark_sigma^2``: a line in (mean, variance) with slope
  4/alpha, through (offset, dark_sigma^2).

  - The line is a weighted least-squares fit over the frames, each variance weighted by
    its sampling variance (from the frame's fourth moment, plus the slope times the
    mean's). Standard errors come from the fit's covariance, inflated by the reduced
    chi-square when it exceeds 1, and are carried to alpha, gain and dark_sigma by the
    delta method.
  - **Laser-off frame.** A frame with the laser off is a point of the line (e = 0) and the
    only one that gives the offset: the offset is its mean. ``dark_frame='auto'`` takes
    the lowest-mean frame as laser-off when its skewness is consistent with zero (dark
    noise is Gaussian; any frame holding photons is skewed by the Gamma pulses). Without
    one, the offset must be given: the line alone fixes only dark_sigma^2 - slope*offset.
  - **Saturated pixels.** A digitiser clips at its range: the clipped values pile up at
    the stack's maximum (or minimum). Where at least 0.1 % of a frame's pixels sit at that
    value, they are masked; a frame with more than 0.1 % clipped is left out of the fit
    (a cut tail lowers the variance and would bend the line). ``saturation`` sets the
    ceiling by hand instead.
  - **Uniformity.** Illumination structure adds variance the PMT did not make. A frame
    whose 8x8-block means vary beyond pixel noise by more than 5 % of its variance is
    an error.

  Args:
    frames: [n, h, w] uniform frames, n >= 2, at different laser powers.
    dark_frame: 'auto', an index, or None (no laser-off frame; then give ``offset``).
    offset: the dark output, when no frame is laser-off.
    saturation: the digitiser's ceiling; default: detected as above.

  Raises:
    ValueError: fewer than two usable frames, NaN pixels, a non-uniform frame, no
      laser-off frame and no offset, or a line that does not rise.
  """
  frames = io.check_stack(
    frames,
    np.float64,
    "expected a stack of frames [n, h, w]",
    "a PMT calibration needs at least 2 uniform frames at different laser powers",
  )
  high = float(frames.max()) if saturation is None else float(saturation)
  low = float(frames.min())
  pile_high = max((f == high).mean() for f in frames) >= CLIP_PILEUP
  pile_low = max((f == low).mean() for f in frames) >= CLIP_PILEUP
  clip_high = saturation is not None or pile_high
  stats = [_frame_moments(f, low, high, pile_low, clip_high) for f in frames]
  for i, s in enumerate(stats):
    if s["structure"] > MAX_STRUCTURE:
      raise ValueError(
        f"frame {i} is not uniform: its {BLOCK}x{BLOCK}-block means vary by "
        f"{100 * s['structure']:.0f}% of its variance beyond noise (at most "
        f"{100 * MAX_STRUCTURE:.0f}%); calibrate on frames of a uniform sample"
      )
    s["used"] = s["clipped"] <= MAX_CLIPPED
  used = [i for i, s in enumerate(stats) if s["used"]]
  if isinstance(dark_frame, str):
    if dark_frame != "auto":
      raise ValueError(f"dark_frame must be 'auto', an index or None, got {dark_frame!r}")
    lowest = min(used, key=lambda i: stats[i]["mean"]) if used else None
    dark_frame = (
      lowest if lowest is not None and abs(stats[lowest]["skew_z"]) < DARK_SKEW_Z else None
    )
  elif dark_frame is not None and not 0 <= dark_frame < len(frames):
    raise ValueError(f"dark_frame {dark_frame} is not a frame of the {len(frames)}")
  if dark_frame is not None and not stats[dark_frame]["used"]:
    raise ValueError(f"the laser-off frame {dark_frame} is clipped")
  levels = {round(stats[i]["mean"], 6) for i in used}
  if len(used) < 2 or len(levels) < 2:
    raise ValueError(
      f"a PMT calibration needs at least 2 unclipped frames at different laser powers, "
      f"got {len(used)} (left out as clipped: "
      f"{[i for i, s in enumerate(stats) if not s['used']]})"
    )
  if dark_frame is None and offset is None:
    raise ValueError(
      "no laser-off frame found (the lowest frame holds photons: it is skewed); "
      "record one with the laser off, or give the offset"
    )
  mean = np.array([stats[i]["mean"] for i in used])
  var = np.array([stats[i]["variance"] for i in used])
  var_var = np.array([stats[i]["variance_var"] for i in used])
  mean_var = np.array([stats[i]["mean_var"] for i in used])
  design = np.stack([mean, np.ones_like(mean)], axis=1)
  slope = 0.0
  for _ in range(3):  # effective variance: the means' errors enter through the slope
    weights = 1.0 / (var_var + slope**2 * mean_var)
    normal = design.T @ (weights[:, None] * design)
    coef = np.linalg.solve(normal, design.T @ (weights * var))
    slope = coef[0]
  cov = np.linalg.inv(normal)
  dof = len(used) - 2
  chi2 = float(np.sum(weights * (var - design @ coef) ** 2) / dof) if dof > 0 else float("nan")
  if dof > 0 and chi2 > 1:
    cov = cov * chi2
  slope, intercept = (float(c) for c in coef)
  if not slope > 0:
    raise ValueError(
      f"the variance does not rise with the mean (slope {slope:.3g}): not PMT frames at "
      "different laser powers"
    )
  if dark_frame is not None:
    offset = stats[dark_frame]["mean"]
    offset_var = stats[dark_frame]["mean_var"]
  else:
    offset, offset_var = float(offset), 0.0
  sigma2 = intercept + slope * offset
  if not sigma2 > 0:
    raise ValueError(
      f"the fitted dark variance is {sigma2:.3g} <= 0: the offset {offset:.4g} does not "
      "fit this line"
    )
  # Delta method. sigma^2 = c + s*o: gradient (o, 1, s) over (s, c, o).
  var_sigma2 = offset**2 * cov[0, 0] + cov[1, 1] + 2 * offset * cov[0, 1] + slope**2 * offset_var
  alpha = 4.0 / slope
  se_alpha = 4.0 / slope**2 * math.sqrt(cov[0, 0])
  for i, s in enumerate(stats):
    s.pop("mean_var")
    s.pop("variance_var")
    s["dark"] = i == dark_frame
  return PmtCalibration(
    alpha=alpha,
    dark_sigma=math.sqrt(sigma2),
    offset=float(offset),
    standard_errors={
      "alpha": se_alpha,
      "gain": 0.75 * math.sqrt(cov[0, 0]),
      "dark_sigma": math.sqrt(var_sigma2) / (2 * math.sqrt(sigma2)),
      "offset": math.sqrt(offset_var),
      "slope": math.sqrt(cov[0, 0]),
      "intercept": math.sqrt(cov[1, 1]),
    },
    frames=stats,
    dark_frame=dark_frame,
    reduced_chi2=chi2,
  )


PMT_KEYS = {"alpha": "pmt_alpha", "dark_sigma": "pmt_dark_sigma", "offset": "pmt_offset"}


def load_pmt(path) -> dict[str, float]:
  """``pmt_alpha``, ``pmt_dark_sigma``, ``pmt_offset`` from a calibrate_pmt.py JSON file.

  Raises:
    FileNotFoundError: missing file.
    ValueError: not JSON, a missing key, or a bad value (naming it).
  """
  from qdjax.sim import simulate

  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no such PMT file: {path}")
  try:
    record = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"PMT file {path}: not valid JSON ({e})") from None
  if not isinstance(record, dict):
    raise ValueError(f"PMT file {path}: must hold a JSON object")
  values = {}
  for key, name in PMT_KEYS.items():
    if key not in record:
      raise ValueError(f"PMT file {path}: missing {key!r}")
    values[name] = record[key]
  try:
    simulate.check_params(values)
  except ValueError as e:
    raise ValueError(f"PMT file {path}: {e}") from None
  return {k: float(v) for k, v in values.items()}


def write_pmt(path, result: PmtCalibration, source: str = "") -> None:
  """Writes a calibration as JSON (atomically); ``load_pmt`` reads it back."""
  record = {**result.to_dict(), "input": str(source)}
  io.write_text(path, json.dumps(record, indent=1) + "\n")


def plot_pmt(result: PmtCalibration, path) -> None:
  """The frames' (mean, variance) and the fitted line (PNG)."""
  from qdjax import plotting

  plt = plotting.plt
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  for s in result.frames:
    marker = "s" if s["dark"] else ("o" if s["used"] else "x")
    ax.plot(s["mean"], s["variance"], marker, color="k" if s["used"] else "r")
  means = np.array([s["mean"] for s in result.frames])
  x = np.linspace(min(means.min(), result.offset), means.max(), 50)
  ax.plot(x, 4 / result.alpha * (x - result.offset) + result.dark_sigma**2, "C0-")
  ax.set_xlabel("frame mean (output units)")
  ax.set_ylabel("frame variance")
  ax.set_title(
    f"alpha {result.alpha:.3g}, gain {result.gain:.3g}, dark sd {result.dark_sigma:.3g}",
    fontsize=9,
  )
  fig.tight_layout()
  io.save_figure(fig, path, dpi=120)
  plt.close(fig)
