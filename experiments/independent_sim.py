r"""Raster-scan movies made without qdjax's simulator, to try the pipeline blind.

  python experiments/independent_sim.py --output=movie.tif --diffusion=0.5

A deliberately separate, plain NumPy model of a two-photon raster scan: every pixel is
recorded at its own time (line by line, left to right, with a retrace after each line),
each QD follows an exact Brownian path sampled at those pixel times, its image is an
isotropic Gaussian spot of peak ``peak`` photons on a flat background, and the counts are
Poisson. Nothing here imports ``qdjax``: the point is to measure ``track.py``'s defaults on
data that qdjax did not make. Writes the movie (.tif, float32 counts) and the ground truth
(``<output>_truth.csv``: frame, particle, x, y of each QD at the time the beam crossed its
row, px, and its D).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def movie(
  seed: int,
  *,
  size: int = 96,
  frames: int = 60,
  qds: int = 8,
  diffusion_um2_s: float = 0.05,
  pixel_um: float = 0.1,
  sigma_um: float = 0.2,
  dwell_s: float = 2e-6,
  retrace_s: float = 1.1e-3,
  peak: float = 12.0,
  background: float = 1.0,
  margin_px: float = 8.0,
):
  """(frames [T, size, size] float32 Poisson counts, truth DataFrame, frame interval s).

  QDs start uniformly at least ``margin_px`` inside the field and diffuse freely (they may
  leave it). Diffusion is per pixel time: the path is exact Brownian motion at every
  pixel's sample time.
  """
  rng = np.random.default_rng(seed)
  line_s = size * dwell_s + retrace_s
  interval = size * line_s
  rows, cols = np.mgrid[0:size, 0:size]
  t_pixel = rows * line_s + cols * dwell_s  # within a frame
  times = (np.arange(frames)[:, None, None] * interval + t_pixel[None]).reshape(-1)
  steps = np.diff(times, prepend=0.0)
  sd_px = np.sqrt(2 * diffusion_um2_s * steps) / pixel_um
  start = rng.uniform(margin_px, size - 1 - margin_px, (qds, 2))
  s = sigma_um / pixel_um
  image = np.full(times.shape, background, np.float64)
  truth = []
  for q in range(qds):
    path = start[q] + np.cumsum(rng.normal(size=(len(times), 2)) * sd_px[:, None], axis=0)
    x = path[:, 0].reshape(frames, size, size)
    y = path[:, 1].reshape(frames, size, size)
    image += (
      peak * np.exp(-((cols[None] - x) ** 2 + (rows[None] - y) ** 2) / (2 * s * s))
    ).reshape(-1)
    # The QD's position when the beam crossed it: the pixel time closest to its own row.
    for f in range(frames):
      r = int(np.clip(round(float(y[f].mean())), 0, size - 1))
      truth.append((f, q, float(x[f, r].mean()), float(y[f, r].mean())))
  counts = rng.poisson(image).astype(np.float32).reshape(frames, size, size)
  table = pd.DataFrame(truth, columns=["frame", "particle", "x", "y"])
  table["D_um2_s"] = diffusion_um2_s
  return counts, table, interval


def main():
  import argparse

  import tifffile

  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  parser.add_argument("--output", required=True)
  parser.add_argument("--diffusion", type=float, default=0.05)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--frames", type=int, default=60)
  parser.add_argument("--qds", type=int, default=8)
  parser.add_argument("--peak", type=float, default=12.0)
  parser.add_argument("--background", type=float, default=1.0)
  args = parser.parse_args()
  frames, truth, interval = movie(
    args.seed,
    size=args.size,
    frames=args.frames,
    qds=args.qds,
    diffusion_um2_s=args.diffusion,
    peak=args.peak,
    background=args.background,
  )
  tifffile.imwrite(args.output, frames)
  truth.to_csv(args.output.rsplit(".", 1)[0] + "_truth.csv", index=False)
  print(f"wrote {args.output}: {frames.shape}, frame interval {interval:.6g} s")


if __name__ == "__main__":
  main()
