"""Tracking a movie file: ``tracking.track_movie`` on a .npy, .npz or .tif movie, its tracks,
per-track D and optional reports written together, only once all is done.

    summary = files.track_file("movie.tif", "tracks.csv", "diffusion.csv", locate, preset)
"""

from __future__ import annotations

import contextlib

import pandas as pd

from qdjax import io
from qdjax.localize import locator
from qdjax.tracks import tracking


def track_file(
  input_path: str,
  tracks_path: str,
  diffusion_path: str,
  locate: locator.Locator,
  preset,
  *,
  plot_path: str | None = None,
  drift_path: str | None = None,
  tissue_path: str | None = None,
  tissue_plot_path: str | None = None,
  progress: bool = True,
  **options,
) -> dict:
  """``tracking.track_movie`` on a movie file; writes the tracks and diffusion CSVs (and a PNG
  quality report, the common motion's CSV, the tissue motion's CSV and its PNG) together,
  only once all is done.

  Args:
    input_path: .npy, .npz (``images``) or .tif movie, (T, H, W) with T >= 2.
    tracks_path: CSV ``frame,x,y,score,particle``.
    diffusion_path: CSV with ``tracking.DIFFUSION_COLUMNS``.
    locate: any localiser (``qdjax.localize.locator.Locator``).
    preset: the microscope.
    plot_path: PNG quality report (``plots.tracks_figure``).
    drift_path: CSV of the common motion per frame.
    tissue_path: CSV of the tissue's motion per strip of lines
      (``registration.TissueMotion.table``; only a header where it was not estimated).
    tissue_plot_path: PNG of that motion (``plots.tissue_figure``).
    options: ``tracking.track_movie``'s keyword arguments.

  Returns:
    the summary dict of ``tracking.Result``.

  Raises:
    FileNotFoundError, ValueError: bad input, or no track found; nothing is written.
  """
  outputs = [tracks_path, diffusion_path, plot_path, drift_path, tissue_path, tissue_plot_path]
  outputs = [p for p in outputs if p is not None]
  for path in outputs:
    io.check_output_path(path)
  frames = io.open_frames(input_path, movie=True)
  result = tracking.track_movie(frames, locate, preset, progress=progress, **options)
  if len(result.tracks) == 0:
    summary = result.summary
    raise ValueError(
      f"no track of >= {result.analysis.min_frames} detections in {input_path} "
      f"({summary['detections']} detections, {summary['detections_kept']} kept at min_score "
      f"{summary['min_score']}); nothing written"
    )
  with contextlib.ExitStack() as stack:
    staged = {path: stack.enter_context(io.atomic_path(path)) for path in outputs}
    io.write_csv(staged[tracks_path], result.tracks, {"x": "%.4f", "y": "%.4f", "score": "%.6g"})
    formats = {
      c: "%.6g"
      for c in result.diffusion.columns
      if c.endswith(("_s", "_um", "value", "rho", "alpha", "_se"))
    }
    io.write_csv(staged[diffusion_path], result.diffusion, formats)
    if drift_path is not None:
      io.write_csv(staged[drift_path], result.motion.table(), {"drift_x_px": "%.4f",
                                                                 "drift_y_px": "%.4f"})  # fmt: skip
    if tissue_path is not None:
      io.write_csv(staged[tissue_path], tissue_table(result), {"time_s": "%.6f"})
    if plot_path is not None or tissue_plot_path is not None:
      from qdjax.tracks import plots  # matplotlib: imported only to draw

      if plot_path is not None:
        plots.tracks_figure(result, staged[plot_path])
      if tissue_plot_path is not None:
        plots.tissue_figure(result.tissue, staged[tissue_plot_path], result.analysis.pixel_size_um)
  return result.summary


def tissue_table(result: tracking.Result) -> pd.DataFrame:
  """The tissue's motion per strip (``registration.TissueMotion.table``, with um), or its
  columns only where it was not estimated."""
  if result.tissue is not None:
    return result.tissue.table(result.analysis.pixel_size_um)
  columns = ["frame", "line", "time_s", "dx_px", "dy_px", "dx_se_px", "dy_se_px", "dx_um", "dy_um"]
  return pd.DataFrame(columns=columns)
