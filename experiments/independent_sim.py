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

Optionally the whole sample moves (``breathing_um``/``breathing_hz``, ``heartbeat_um``/
``heartbeat_hz``: sinusoids of random phase along x and y, evaluated at every pixel's time,
so frames shear line by line) over a textured background that moves with it (a log-normal
field of relative variation ``texture_cv`` and correlation length ``texture_um``, built from
random Fourier modes). The truth then gives where each QD appeared (x, y) and where it was
in the tissue (x_tissue, y_tissue); ``<output>_motion.csv`` gives the displacement per line.
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
  breathing_um: float = 0.0,
  breathing_hz: float = 1.5,
  heartbeat_um: float = 0.0,
  heartbeat_hz: float = 7.0,
  texture_cv: float = 0.0,
  texture_um: float = 0.4,
  motion_table: bool = False,
):
  """(frames [T, size, size] float32 Poisson counts, truth DataFrame, frame interval s);
  with ``motion_table``, also the per-line displacement (frame, line, time_s, dx_px, dy_px).

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
  # The sample's displacement (px) at every pixel time: breathing mostly along y, the
  # heartbeat along both, each with a random phase.
  shift = np.zeros((len(times), 2))
  for amplitude, hz, direction in (
    (breathing_um, breathing_hz, np.array([0.3, 1.0])),
    (heartbeat_um, heartbeat_hz, np.array([0.7, 0.7])),
  ):
    if amplitude > 0:
      phase = rng.uniform(0, 2 * np.pi)
      wave = amplitude / pixel_um * np.sin(2 * np.pi * hz * times + phase)
      shift += wave[:, None] * direction / np.linalg.norm(direction)
  if texture_cv > 0:  # log-normal texture in the tissue's frame, sampled where the beam is
    k = rng.normal(size=(64, 2)) * pixel_um / texture_um
    phase = rng.uniform(0, 2 * np.pi, 64)
    s2 = np.log1p(texture_cv**2)
    bx = np.broadcast_to(cols[None], (frames, size, size)).reshape(-1) - shift[:, 0]
    by = np.broadcast_to(rows[None], (frames, size, size)).reshape(-1) - shift[:, 1]
    field = np.zeros(times.shape)
    for m in range(64):
      field += np.cos(k[m, 0] * bx + k[m, 1] * by + phase[m])
    field *= np.sqrt(2 / 64)
    image = background * np.exp(np.sqrt(s2) * field - s2 / 2)
  else:
    image = np.full(times.shape, background, np.float64)
  truth = []
  for q in range(qds):
    tissue = start[q] + np.cumsum(rng.normal(size=(len(times), 2)) * sd_px[:, None], axis=0)
    path = tissue + shift
    x = path[:, 0].reshape(frames, size, size)
    y = path[:, 1].reshape(frames, size, size)
    xt = tissue[:, 0].reshape(frames, size, size)
    yt = tissue[:, 1].reshape(frames, size, size)
    image += (
      peak * np.exp(-((cols[None] - x) ** 2 + (rows[None] - y) ** 2) / (2 * s * s))
    ).reshape(-1)
    # The QD's position when the beam crossed it: the pixel time closest to its own row.
    for f in range(frames):
      r = int(np.clip(round(float(y[f].mean())), 0, size - 1))
      truth.append(
        (f, q, float(x[f, r].mean()), float(y[f, r].mean()), float(xt[f, r].mean()),
         float(yt[f, r].mean()))
      )  # fmt: skip
  counts = rng.poisson(image).astype(np.float32).reshape(frames, size, size)
  table = pd.DataFrame(truth, columns=["frame", "particle", "x", "y", "x_tissue", "y_tissue"])
  table["D_um2_s"] = diffusion_um2_s
  if not motion_table:
    return counts, table, interval
  line_shift = shift.reshape(frames, size, size, 2).mean(axis=2)  # [T, lines, 2]
  line_time = times.reshape(frames, size, size).mean(axis=2)
  motion = pd.DataFrame(
    {
      "frame": np.repeat(np.arange(frames), size),
      "line": np.tile(np.arange(size), frames),
      "time_s": line_time.reshape(-1),
      "dx_px": line_shift[..., 0].reshape(-1),
      "dy_px": line_shift[..., 1].reshape(-1),
    }
  )
  return counts, table, interval, motion


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
  parser.add_argument("--breathing_um", type=float, default=0.0)
  parser.add_argument("--breathing_hz", type=float, default=1.5)
  parser.add_argument("--heartbeat_um", type=float, default=0.0)
  parser.add_argument("--heartbeat_hz", type=float, default=7.0)
  parser.add_argument("--texture_cv", type=float, default=0.0)
  parser.add_argument("--texture_um", type=float, default=0.4)
  args = parser.parse_args()
  frames, truth, interval, motion = movie(
    args.seed,
    size=args.size,
    frames=args.frames,
    qds=args.qds,
    diffusion_um2_s=args.diffusion,
    peak=args.peak,
    background=args.background,
    breathing_um=args.breathing_um,
    breathing_hz=args.breathing_hz,
    heartbeat_um=args.heartbeat_um,
    heartbeat_hz=args.heartbeat_hz,
    texture_cv=args.texture_cv,
    texture_um=args.texture_um,
    motion_table=True,
  )
  tifffile.imwrite(args.output, frames)
  stem = args.output.rsplit(".", 1)[0]
  truth.to_csv(stem + "_truth.csv", index=False)
  if args.breathing_um > 0 or args.heartbeat_um > 0:
    motion.to_csv(stem + "_motion.csv", index=False)
  print(f"wrote {args.output}: {frames.shape}, frame interval {interval:.6g} s")


if __name__ == "__main__":
  main()
