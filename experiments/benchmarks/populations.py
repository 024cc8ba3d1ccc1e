"""Mixed populations through the whole pipeline (``bench.py --what=populations``).

Movies of the ``invivo`` preset, 128 x 128 px, 100 frames, about 24 QDs in the field,
QDs in focus, drawn per QD from motion populations (``qdjax.sim.motion``). Each movie goes
through ``tracking.track_movie`` with every default (the shipped model, the movie's
threshold and link range, tracks of >= 10 detections); nothing is chosen by looking at the
truth. Scenarios:

* ``two_free``: D = 0.05 and 0.5 um^2/s, 30% / 70%.
* ``three``: immobile 20%, free D = 0.05 30%, free D = 0.5 50%.
* ``confined_vs_free``: confined in a reflecting sphere of radius 0.3 um at D = 0.5, 50%,
  and free at D = 0.5, 50%.

Per scenario: the populations fitted to the pooled per-track D of tracks of >= 30
detections (``populations.fit_populations``), against the true D values and the true
shares of such tracks (each track identified with the QD within 3 px of most of its
detections); and per track-length bin, the share of tracks whose motion type (free
against not free) matches their QD's.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from benchmarks import diffusion as diffusion_bench
from qdjax.sim import motion, movie, presets
from qdjax.tracks import populations, tracking

SIZE, FRAMES, QDS = 128, 100, 24
LONG = 30  # tracks judged for populations
MATCH_PX = 3.0
SCENARIOS = {
  "two_free": [
    motion.Population("free", 0.3, 0.05),
    motion.Population("free", 0.7, 0.5),
  ],
  "three": [
    motion.Population("immobile", 0.2),
    motion.Population("free", 0.3, 0.05),
    motion.Population("free", 0.5, 0.5),
  ],
  "confined_vs_free": [
    motion.Population("confined", 0.5, 0.5, radius_um=0.3),
    motion.Population("free", 0.5, 0.5),
  ],
}
LENGTH_BINS = ((10, 30), (30, 50), (50, 101))


def run(repeats: int = 1, quick: bool = False) -> dict:
  """The benchmark (--quick: 1 movie of 64 x 64 px, 30 frames, 8 QDs, of the ``three``
  scenario alone: each scenario's motion kinds are a program of their own)."""
  del repeats  # accuracy: one pass
  from qdjax.localize import locator

  preset = presets.get("invivo")
  locate = locator.make("model", preset=preset)
  movies = 1 if quick else 4
  frames_per_movie = 30 if quick else FRAMES
  size, qds = (64, 8) if quick else (SIZE, QDS)
  start = time.perf_counter()
  rows = {}
  scenarios = {"three": SCENARIOS["three"]} if quick else SCENARIOS
  for s, (name, pops) in enumerate(tqdm(scenarios.items(), desc="populations", unit="scenario")):
    frame = preset.sim_params(
      height=size, width=size, num_particles=qds, sigma_z_um=1e3, margin_px=0.0
    )
    params = movie.make_params(frame, frames_per_movie, motion=pops)
    out = jax.device_get(movie.simulate_movies(jax.random.key(100 + s), params, movies))
    counts = np.asarray(out.counts)
    if frame.detector == "pmt":  # back to photons, as a user does with calibrate_pmt.py
      counts = (counts - float(frame.pmt_offset)) * float(frame.pmt_alpha) / 3.0
    tables, kinds_true, d_true = [], [], []
    analysis = None
    for m in range(movies):
      result = tracking.track_movie(counts[m], locate, preset)
      analysis = result.analysis
      identity = diffusion_bench.identify(
        result.tracks, np.asarray(out.centroids[m]), np.asarray(out.present[m]), MATCH_PX
      )
      truth = motion.truth_arrays(
        jax.tree.map(lambda a, m=m: a[m], out.motion), out.present[m].any(0)
      )
      table = result.diffusion.copy()
      qd = table["particle"].map(identity).fillna(-1).astype(int).to_numpy()
      table["true_motion"] = np.where(qd >= 0, truth["qd_motion"][np.maximum(qd, 0)], "unmatched")
      table["true_D"] = np.where(qd >= 0, truth["qd_diffusion_um2_s"][np.maximum(qd, 0)], np.nan)
      tables.append(table)
      kinds_true.append(truth["qd_motion"])
      d_true.append(truth["qd_diffusion_um2_s"])
    table = pd.concat(tables, ignore_index=True)
    matched = table[table["true_motion"] != "unmatched"]
    row = {"tracks": len(table), "matched_tracks": len(matched)}
    long = table[table["n_detections"] >= LONG]
    try:
      found = populations.fit_populations(long, analysis)
      row["fitted"] = found.table().to_dict("list")
      row["immobile_component"] = bool(found.immobile)
      row["bic_by_k"] = found.by_k
    except ValueError as e:
      row["fitted"] = f"not fitted: {e}"
    row["long_tracks"] = {
      "D_um2_s": [round(float(v), 5) for v in long["D_um2_s"]],
      "true_motion": list(long["true_motion"]),
      "true_D_um2_s": [round(float(v), 5) for v in long["true_D"]],
    }
    long_matched = long[long["true_motion"] != "unmatched"]
    key = long_matched["true_motion"] + ":" + long_matched["true_D"].round(3).astype(str)
    row["true_shares_of_long_tracks"] = (key.value_counts() / max(len(key), 1)).to_dict()
    row["true_shares_of_qds"] = {f"{p.kind}:{p.diffusion_um2_s or 0:g}": p.fraction for p in pops}
    by_length = {}
    for lo, hi in LENGTH_BINS:
      one = matched[(matched["n_detections"] >= lo) & (matched["n_detections"] < hi)]
      if len(one):
        right = (one["motion"] == "free") == (one["true_motion"] == "free")
        by_length[f"{lo}-{hi - 1}"] = {"tracks": len(one), "accuracy": float(right.mean())}
    row["free_vs_not_free_accuracy_by_length"] = by_length
    # {true motion: {motion called: tracks}}
    row["motion_true_to_called"] = (
      pd.crosstab(matched["true_motion"], matched["motion"]).to_dict(orient="index")
      if len(matched)
      else {}
    )
    rows[name] = row
  return {
    "what": "populations",
    "preset": "invivo",
    "field_px": [size, size],
    "frames": frames_per_movie,
    "qds_per_movie": qds,
    "movies_per_scenario": movies,
    "long_track_detections": LONG,
    "scenarios": {k: [p.to_dict() for p in v] for k, v in SCENARIOS.items()},
    "rows": rows,
    "seconds": time.perf_counter() - start,
    "note": "every tracking setting is track_movie's default; truth only identifies tracks",
  }
