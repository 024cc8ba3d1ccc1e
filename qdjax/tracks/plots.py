"""The figures of a tracked movie: the quality report ``track.py --plot`` writes, and the
tissue's motion read from its background.

Importing this module leaves matplotlib's backend alone (as ``qdjax.plotting``); every
figure is closed once saved.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from qdjax import io
from qdjax.tracks import diffusion, tracking


def tracks_figure(result, path, max_tracks: int = 20):
  """The quality report of a tracked movie, as a PNG.

  Top: the score histogram with the threshold used; detections per frame, before and
  after it; the tracks' lengths with the shortest kept. Bottom: the longest tracks over the
  mean frame, each labelled with its particle id; their MSD curves, the CVE's expected MSD
  4 (D t - 2 R D dt + sigma^2) (solid) and the naive fit 4 D t (dashed), labelled with the
  same ids; and the common motion per frame (subtracted before D when marked so).

  Args:
    result: ``qdjax.tracks.tracking.Result``.
    path: PNG to write (atomically).
    max_tracks: tracks drawn (the longest).
  """
  summary, analysis = result.summary, result.analysis
  fig, axes = plt.subplots(2, 4, figsize=(20, 8.6))
  (hist, per_frame, lengths, d_ax), (image, msd_ax, drift_ax, kinds_ax) = axes
  scores = result.detections["score"].to_numpy(np.float64)
  positive = scores[scores > 0]
  if len(positive):
    bins = np.geomspace(positive.min(), positive.max() * 1.0001, 60)
    hist.hist(positive, bins=bins, color="0.5")
    hist.set_xscale("log")
  if summary["min_score"] is not None:
    hist.axvline(summary["min_score"], color="red", label=f"threshold {summary['min_score']:.3g}")
    hist.legend(fontsize=8)
  hist.set(xlabel="detection score", ylabel="detections", title="scores")
  frames = np.arange(summary["frames"])
  every = np.bincount(result.detections["frame"], minlength=len(frames))[: len(frames)]
  kept = result.detections["score"] >= (summary["min_score"] or -np.inf)
  above = np.bincount(result.detections["frame"][kept], minlength=len(frames))[: len(frames)]
  in_tracks = np.bincount(result.tracks["frame"], minlength=len(frames))[: len(frames)]
  per_frame.plot(frames, every, color="0.6", lw=1, label="all peaks")
  per_frame.plot(frames, above, color="C0", lw=1, label="above threshold")
  per_frame.plot(frames, in_tracks, color="C2", lw=1.5, label="in kept tracks")
  per_frame.set(xlabel="frame", ylabel="detections", title="detections per frame")
  per_frame.legend(fontsize=8)
  table = result.diffusion
  if len(table):
    lengths.hist(table["n_detections"], bins=20, color="C2")
  lengths.axvline(analysis.min_frames, color="red", label=f"shortest kept ({analysis.min_frames})")
  lengths.set(xlabel="detections per track", ylabel="tracks", title="track lengths")
  lengths.legend(fontsize=8)

  image.imshow(result.mean_frame, cmap="gray", interpolation="nearest")
  image.set_title("tracks over the mean frame (particle ids)")
  image.set_axis_off()
  shown = table.sort_values("n_detections", ascending=False).head(max_tracks)
  colors = plt.cm.tab20(np.arange(len(shown)) % 20)
  lag_max = 20
  tracks = result.tracks
  msd = (
    tracking.imsd(tracks[tracks["particle"].isin(shown["particle"])], analysis, lag_max)
    if len(shown)
    else None
  )
  for color, row in zip(colors, shown.itertuples(), strict=True):
    one = tracks[tracks["particle"] == row.particle]
    image.plot(one["x"], one["y"], "-", color=color, lw=1)
    image.text(one["x"].iloc[0], one["y"].iloc[0], str(row.particle), color=color, fontsize=9)
    curve = msd[row.particle].dropna()
    lag = curve.index.to_numpy(np.float64)
    msd_ax.plot(lag, curve.to_numpy(), "o", color=color, ms=3)
    sigma2 = (row.sigma_x_um**2 + row.sigma_y_um**2) / 2
    line = diffusion.expected_msd(
      lag, row.D_um2_s, sigma2, analysis.mean_blur, analysis.frame_interval_s
    )
    msd_ax.plot(lag, line, "-", color=color, lw=1)
    msd_ax.plot(lag, 4 * row.D_msd_um2_s * lag, "--", color=color, lw=0.8)
    if len(lag):
      msd_ax.text(lag[-1], curve.to_numpy()[-1], f" {row.particle}", color=color, fontsize=7)
  msd_ax.set(xlabel="lag time (s)", ylabel="MSD (um$^2$)",
             title="MSD: CVE (solid), naive fit (dashed)")  # fmt: skip
  motion = result.motion
  drift_ax.plot(motion.frames, motion.offset_px[:, 0], label="x")
  drift_ax.plot(motion.frames, motion.offset_px[:, 1], label="y")
  state = "subtracted" if motion.applied else "not subtracted"
  drift_ax.set(xlabel="frame", ylabel="common motion (px)",
               title=f"common motion, p = {motion.p_value:.2g} ({state})")  # fmt: skip
  drift_ax.legend(fontsize=8)
  _populations_panels(table, result.populations, d_ax, kinds_ax)
  fig.tight_layout()
  io.save_figure(fig, path, dpi=100)
  plt.close(fig)


def _populations_panels(table, found, d_ax, kinds_ax):
  """D per track with the fitted populations (each a normal of its mean SE, scaled to its
  share), and the count of each motion type."""
  values = table["D_um2_s"].to_numpy(np.float64) if len(table) else np.zeros(0)
  values = values[np.isfinite(values)]
  if len(values):
    counts, edges, _ = d_ax.hist(values, bins=30, color="0.6", label="tracks")
    if found is not None:
      grid = np.linspace(edges[0], edges[-1], 400)
      width = edges[1] - edges[0]
      spread = float(np.median(table["D_se_um2_s"].dropna())) if len(table) else 0.0
      for k, (d, share) in enumerate(zip(found.diffusion, found.fractions, strict=True)):
        sd = max(spread * max(d, 1e-9) / max(np.median(values), 1e-9), width)
        curve = share * len(values) * width * np.exp(-0.5 * ((grid - d) / sd) ** 2)
        curve /= sd * np.sqrt(2 * np.pi)
        d_ax.plot(grid, curve, lw=1.5, label=f"D {d:.3g} ({100 * share:.0f}%)", color=f"C{k}")
    d_ax.legend(fontsize=8)
  d_ax.set(xlabel="D per track (um$^2$/s)", ylabel="tracks", title="D over tracks, populations")
  if "motion" in table and len(table):
    kinds = table["motion"].value_counts()
    kinds_ax.bar(kinds.index, kinds.to_numpy(), color="C4")
  kinds_ax.set(ylabel="tracks", title="motion type per track")


def tissue_figure(motion, path, pixel_size_um: float, truth=None, frame=None):
  """The tissue's motion read from the background: x and y displacement per strip of lines
  against time, in um (and the true motion, dashed, where known); optionally one frame
  beside it, so the shear it corrects is seen.

  Args:
    motion: ``qdjax.tracks.registration.TissueMotion``, or None (not estimated: the figure
      says so).
    path: PNG to write (atomically).
    pixel_size_um: a.
    truth: optional (time_s [n], shift_px [n, 2]) of the true motion.
    frame: optional [h, w] image to show on the left.
  """
  panels = 2 if frame is not None else 1
  fig, axes = plt.subplots(
    1, panels, figsize=(4.2 * (panels - 1) + 9, 3.6), squeeze=False,
    gridspec_kw={"width_ratios": [1] * (panels - 1) + [2.4]},
  )  # fmt: skip
  axes = axes[0]
  if frame is not None:
    axes[0].imshow(frame, cmap="magma", interpolation="nearest")
    axes[0].set_title("a recorded frame")
    axes[0].set_axis_off()
  ax = axes[-1]
  if motion is None:
    ax.text(0.5, 0.5, "tissue motion not estimated (frame too small)", ha="center")
    ax.set_axis_off()
  else:
    for i, (name, color) in enumerate((("x", "C0"), ("y", "C3"))):
      ax.plot(motion.time_s, motion.shift_px[:, i] * pixel_size_um, color=color, lw=0.8,
              label=f"{name}, estimated")  # fmt: skip
      if truth is not None:
        time, shift = truth
        ax.plot(time, shift[:, i] * pixel_size_um, "--", color="k", lw=0.8,
                label="true" if i == 0 else None)  # fmt: skip
    state = "corrected" if motion.applied else "not corrected"
    ax.set(xlabel="time (s)", ylabel="displacement (um)",
           title=f"tissue motion, {state}: {motion.reason}")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, ncol=3)
  fig.tight_layout()
  io.save_figure(fig, path, dpi=110)
  plt.close(fig)
