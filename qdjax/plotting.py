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
