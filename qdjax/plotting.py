"""Figures a microscopist looks at before trusting a number."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qdjax import io  # noqa: E402


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


def tracks_figure(mean_frame, tracks, table, analysis, path, max_tracks: int = 30):
  """Tracks over the mean frame (left) and their MSD curves with the fitted lines (right).

  Args:
    mean_frame: [h, w].
    tracks: DataFrame frame, x, y, particle (px).
    table: per-track D (``qdjax.track.estimate``): the CVE line is the blur- and
      noise-aware expected MSD, 4 (D t - 2 R D dt + sigma^2); dashed, the naive fit 4 D t.
    analysis: ``qdjax.track.Analysis``.
    path: PNG to write (atomically).
  """
  from qdjax import diffusion, track

  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6))
  left.imshow(mean_frame, cmap="gray", interpolation="nearest")
  left.set_title("tracks over the mean frame")
  left.set_axis_off()
  shown = table.sort_values("n_frames", ascending=False).head(max_tracks)
  colors = plt.cm.tab10(np.arange(len(shown)) % 10)
  lag_max = 20
  msd = (
    track.imsd(tracks[tracks["particle"].isin(shown["particle"])], analysis, lag_max)
    if len(shown)
    else None
  )
  for color, row in zip(colors, shown.itertuples(), strict=True):
    one = tracks[tracks["particle"] == row.particle]
    left.plot(one["x"], one["y"], "-", color=color, lw=1)
    left.plot(one["x"].iloc[:1], one["y"].iloc[:1], "o", color=color, ms=3)
    curve = msd[row.particle].dropna()
    lag = curve.index.to_numpy(np.float64)
    right.plot(lag, curve.to_numpy(), "o", color=color, ms=3)
    line = diffusion.expected_msd(
      lag, row.D_um2_s, row.sigma_um**2, analysis.blur, analysis.frame_interval_s
    )
    right.plot(lag, line, "-", color=color, lw=1)
    right.plot(lag, 4 * row.D_msd_um2_s * lag, "--", color=color, lw=0.8)
  right.set_xlabel("lag time (s)")
  right.set_ylabel("MSD (um$^2$)")
  right.set_title("MSD: CVE fit (solid), naive MSD fit (dashed)")
  fig.tight_layout()
  io.save_figure(fig, path, dpi=110)
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
