"""Figures a microscopist looks at before trusting a number.

Importing this module leaves matplotlib's backend alone, so a notebook keeps its inline
figures; every figure is closed once saved. The command lines draw off-screen
(``cli.run`` sets ``MPLBACKEND=Agg`` unless the user chose a backend).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from qdjax import io


def contact_sheet(
  images, path, keypoints=None, detections=None, titles=None, columns=8, max_frames=32
):
  """Grid of frames with ground truth (+) and detections (x, sized by nothing) drawn on.

  Args:
    images: [n, h, w].
    path: PNG to write (atomically).
    keypoints: optional [n, P, 2] (x, y) px, NaN where absent.
    detections: optional list of [k, 2+] arrays (x, y, ...) per frame.
    titles: optional list of per-frame titles.
  """
  images = np.asarray(images)[:max_frames]
  n = len(images)
  columns = max(1, min(columns, n))
  rows = max(1, -(-n // columns))
  fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.6 * rows), squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.set_axis_off()
    if i >= n:
      continue
    ax.imshow(images[i], cmap="magma", interpolation="nearest")
    if keypoints is not None:
      kp = np.asarray(keypoints[i]).reshape(-1, 2)
      ax.plot(kp[:, 0], kp[:, 1], "+", color="cyan", ms=8, mew=1.5)
    if detections is not None and len(detections[i]):
      det = np.asarray(detections[i])
      ax.plot(det[:, 0], det[:, 1], "x", color="lime", ms=6, mew=1.2)
    if titles is not None:
      ax.set_title(titles[i], fontsize=7)
  fig.tight_layout(pad=0.3)
  io.save_figure(fig, path, dpi=110)
  plt.close(fig)


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
  from qdjax.tracks import diffusion, tracking

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


def populations_figure(record: dict, path) -> None:
  """``bench.py --what=populations``'s result: per scenario, the D of tracks of >= 30
  detections (coloured by their QD's true motion), the true D values (dashed) and the fitted
  populations (solid, each at its D, height its share); last, free-vs-not-free accuracy
  by track length."""
  rows = record["rows"]
  fig, axes = plt.subplots(1, len(rows) + 1, figsize=(4.6 * (len(rows) + 1), 3.8))
  colours = {"free": "C0", "confined": "C1", "immobile": "C2", "directed": "C3"}
  for ax, (name, row) in zip(axes, rows.items(), strict=False):
    long = row["long_tracks"]
    d = np.asarray(long["D_um2_s"], np.float64)
    kinds = np.asarray(long["true_motion"])
    if len(d):
      bins = np.linspace(min(d.min(), 0.0), d.max() * 1.05 + 1e-9, 30)
      shown = [k for k in colours if np.any(kinds == k)]
      ax.hist([d[kinds == k] for k in shown], bins=bins, stacked=True,
              color=[colours[k] for k in shown], label=[f"true: {k}" for k in shown])  # fmt: skip
      ax.legend(fontsize=7)
    for p in record["scenarios"][name]:
      true_d = 0.0 if p["kind"] == "immobile" else p["diffusion_um2_s"]
      ax.axvline(true_d, color="k", ls="--", lw=1)
    fitted = row.get("fitted")
    if isinstance(fitted, dict):
      top = ax.get_ylim()[1]
      for value, share in zip(fitted["D_um2_s"], fitted["fraction"], strict=True):
        ax.plot([value, value], [0, share * top], color="red", lw=2.5)
    ax.set(xlabel="D per track (um$^2$/s)", ylabel="tracks", title=name.replace("_", " "))
  acc = axes[-1]
  for name, row in rows.items():
    by = row["free_vs_not_free_accuracy_by_length"]
    if by:
      acc.plot(list(by), [v["accuracy"] for v in by.values()], "o-", label=name)
  acc.set(xlabel="detections per track", ylabel="free vs not free: accuracy", ylim=(0, 1.02),
          title="motion type by track length")  # fmt: skip
  acc.legend(fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, path, dpi=100)
  plt.close(fig)


def training_curves(records: list[dict], path) -> None:
  """Training loss and validation AUC (per epsilon) against step, as a PNG.

  Args:
    records: a training run's metrics.jsonl records (``loss`` and ``val_auc`` entries).
    path: PNG to write (atomically).
  """
  train = [r for r in records if "loss" in r]
  val = [r for r in records if "val_auc" in r]
  fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 3.8))
  if train:
    # Markers, so a run shorter than log_every (one record) still shows its loss.
    steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
    ax_loss.plot(steps, losses, lw=1, marker="o", ms=3)
    ax_loss.set_yscale("log")
  ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
  for eps in val[0]["val_auc"] if val else []:
    steps = [r["step"] for r in val]
    ax_auc.plot(steps, [r["val_auc"][eps] for r in val], marker="o", ms=3, label=f"eps {eps} px")
  if val:
    ax_auc.legend(fontsize=8)
  ax_auc.set(
    xlabel="step", ylabel="validation AUC", title="validation (pooled splits)", ylim=(0, 1)
  )
  fig.tight_layout()
  io.save_figure(fig, path, dpi=100)
  plt.close(fig)


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


def motion_figure(record: dict, path) -> None:
  """``bench.py --what=motion``'s result: a frame recorded during breathing (sheared line by
  line); the tissue's motion read from the background against the true one; and D_est / D
  against the breathing amplitude, corrected (what ``track.py`` gives) and not, per D."""
  example = record.get("example")
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [1, 1.8, 1.4]})
  frame_ax, trace_ax, d_ax = axes
  if example:
    frame_ax.imshow(np.asarray(example["frame"]), cmap="magma", interpolation="nearest")
    frame_ax.set_title(f"a frame, breathing {example['amplitude_um']:g} um", fontsize=9)
    time = np.asarray(example["time_s"])
    estimated, true = np.asarray(example["estimated_um"]), np.asarray(example["true_um"])
    for i, (name, color) in enumerate((("x", "C0"), ("y", "C3"))):
      trace_ax.plot(time, estimated[:, i], color=color, lw=1, label=f"{name}, read from the movie")
      trace_ax.plot(time, true[:, i], "--", color="k", lw=0.8, label="true" if i == 0 else None)
    trace_ax.set(xlabel="time (s)", ylabel="tissue displacement (um)", title="tissue motion")
    trace_ax.legend(fontsize=8)
  frame_ax.set_axis_off()
  amplitudes = record["amplitudes_um"]
  for j, d in enumerate(record["diffusions_um2_s"]):
    for row, style, label in (("qdjax", "-o", "corrected (defaults)"),
                              ("uncorrected", ":x", "uncorrected"),
                              ("truth_corrected", "--s", "true positions, corrected")):  # fmt: skip
      cells = [record["cells"][f"A={a:g}um,D={d:g}"][row] for a in amplitudes]
      ratio = [c.get("mean_ratio", np.nan) for c in cells]
      se = [c.get("mean_ratio_se") or 0.0 for c in cells]
      d_ax.errorbar(amplitudes, ratio, yerr=se, fmt=style, color=f"C{j}", ms=4, lw=1,
                    label=f"D={d:g}: {label}")  # fmt: skip
  d_ax.axhspan(0.9, 1.1, color="0.9")
  d_ax.axhline(1.0, color="k", lw=0.8)
  d_ax.set_yscale("log")
  d_ax.set(xlabel="breathing amplitude (um)", ylabel="D estimated / D true",
           title="D with and without the correction")  # fmt: skip
  d_ax.legend(fontsize=6, ncol=1)
  fig.tight_layout()
  io.save_figure(fig, path, dpi=110)
  plt.close(fig)
