"""``track.py``'s defaults on movies qdjax did not make (``bench.py --what=blind``).

Movies come from ``experiments/independent_sim.py``, a plain NumPy raster-scan model that
shares no code with qdjax's simulator: 96 x 96 px, 8 to 20 QDs, 50 to 100 frames (drawn per
movie), spot peak 12 photons on a background of 1, Poisson counts, the ``paper`` preset's
pixel size, PSF and scan timing. Each movie goes through ``tracking.track_movie`` with every
default, as a user runs ``track.py --input=movie.tif --preset=paper``; nothing is chosen by
looking at the truth. Per D: the mean over movies of the per-track D of tracks with 20 or
more detections (ratio to the truth), the NaN count among them, tracks per QD, and the
ensemble and edge-corrected D. Beside them, the same per-track mean of the true positions
cut the same way (inside the field, 20 or more frames): fast QDs leave a 96 px field within
a few dozen frames, so the tracks long enough to judge are the slower ones, and that row
shows how much of the gap is the metric's own selection.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from qdjax.sim import presets
from qdjax.tracks import tracking

DIFFUSIONS = (0.05, 0.5)
LONG = 20  # tracks of at least this many detections are judged


def _simulator(path: str | None):
  """The independent simulator module (``experiments/independent_sim.py`` by default)."""
  path = Path(path) if path else Path(sys.argv[0]).resolve().parent / "independent_sim.py"
  if not path.is_file():
    raise FileNotFoundError(f"independent simulator not found: {path}")
  spec = importlib.util.spec_from_file_location("independent_sim", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run(repeats: int = 1, quick: bool = False, simulator: str | None = None, method="model"):
  """The benchmark (--quick: 1 movie of 50 frames per D)."""
  del repeats  # accuracy: one pass
  from qdjax.localize import locator

  sim = _simulator(simulator)
  preset = presets.get("paper")
  locate = locator.make(method, preset=preset)
  movies = 1 if quick else 12
  start = time.perf_counter()
  rows = {}
  for i, d in enumerate(tqdm(DIFFUSIONS, desc="blind bench", unit="D")):
    ratios, nan, tracks_per_qd, ensembles, fields, truth_ratios = [], 0, [], [], [], []
    for m in range(movies):
      rng = np.random.default_rng([i, m])
      qds, frames = int(rng.integers(8, 21)), 50 if quick else int(rng.integers(50, 101))
      movie, truth, interval = sim.movie(1000 * i + m, frames=frames, qds=qds, diffusion_um2_s=d)
      result = tracking.track_movie(movie, locate, preset, frame_interval_s=interval)
      # The metric's own selection: the true positions, kept >= 2 px inside the field, as
      # tracks of >= LONG frames (fast QDs leave a small field; those that stay read low).
      h, w = movie.shape[1:]
      inside = truth[(truth.x > 1.5) & (truth.x < w - 2.5) & (truth.y > 1.5) & (truth.y < h - 2.5)]
      truth_table = tracking.estimate(
        tracking.keep_long(inside.reset_index(drop=True), LONG),
        tracking.analysis_for(preset, h, w, interval, estimator="cve"),
      )
      truth_ratios.extend(truth_table["D_um2_s"].to_numpy() / d)
      table = result.diffusion
      long = table[table["n_detections"] >= LONG]
      nan += int((~np.isfinite(long["D_um2_s"])).sum())
      ratios.extend(long["D_um2_s"].to_numpy() / d)
      tracks_per_qd.append(len(long) / qds)
      ensembles.append(result.summary["ensemble"]["D_um2_s"] / d)
      fields.append(result.summary["field_ensemble"]["D_um2_s"] / d)
    ratios = np.asarray(ratios, np.float64)
    finite = ratios[np.isfinite(ratios)]
    rows[str(d)] = {
      "movies": movies,
      "long_tracks": len(ratios),
      "mean_ratio": float(finite.mean()) if len(finite) else math.nan,
      "mean_ratio_se": float(finite.std(ddof=1) / math.sqrt(len(finite)))
      if len(finite) > 1
      else math.nan,
      "median_ratio": float(np.median(finite)) if len(finite) else math.nan,
      "nan_long_tracks": nan,
      "long_tracks_per_qd": float(np.mean(tracks_per_qd)),
      "max_long_tracks_per_qd": float(np.max(tracks_per_qd)),
      "truth_long_tracks_mean_ratio": float(np.nanmean(truth_ratios)),
      "ensemble_ratio_mean": float(np.nanmean(ensembles)),
      "field_ensemble_ratio_mean": float(np.nanmean(fields)),
    }
  targets = {
    "mean_ratio_in_0.8_1.2_at_every_D": all(0.8 <= r["mean_ratio"] <= 1.2 for r in rows.values()),
    "no_nan": all(r["nan_long_tracks"] == 0 for r in rows.values()),
    "at_most_2_long_tracks_per_qd": all(r["max_long_tracks_per_qd"] <= 2 for r in rows.values()),
  }
  return {
    "what": "blind",
    "method": method,
    "preset": "paper",
    "simulator": "experiments/independent_sim.py (NumPy, no qdjax code)",
    "field_px": [96, 96],
    "qds": [8, 20],
    "frames": [50, 100],
    "peak_photons": 12.0,
    "background_photons": 1.0,
    "long_track_detections": LONG,
    "rows": rows,
    "targets": targets,
    "seconds": time.perf_counter() - start,
  }
