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
