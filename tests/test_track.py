"""Diffusion estimators against simulation with known truth; linking; track.py end to end."""

import math
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import assert_one_line_error

from qdjax import diffusion, presets, track

D, DT, SIGMA2 = 0.5, 0.08, 0.002  # um^2/s, s, um^2 per coordinate


def blurred_tracks(rng, n_tracks, n_frames, exposed=0.5, sub=20, d=D, sigma2=SIGMA2):
  """[n_tracks, n_frames, 2] positions: the path averaged over the first ``exposed`` of each
  frame interval (a camera-like shutter, R = exposed / 6), plus Gaussian noise."""
  steps = rng.normal(0, math.sqrt(2 * d * DT / sub), (n_tracks, n_frames * sub, 2))
  path = np.cumsum(steps, axis=1).reshape(n_tracks, n_frames, sub, 2)
  shutter = np.arange(sub) < round(exposed * sub)
  positions = path[:, :, shutter].mean(axis=2)
  blur = diffusion.blur_coefficient(np.arange(sub) * DT / sub, shutter, DT)
  return positions + rng.normal(0, math.sqrt(sigma2), positions.shape), shutter, blur


def test_blur_coefficient_of_a_uniform_shutter():
  times = np.arange(1000) / 1000 * DT
  assert diffusion.blur_coefficient(times, np.ones(1000), DT) == pytest.approx(1 / 6, rel=1e-2)
  assert diffusion.blur_coefficient(times, times < DT / 2, DT) == pytest.approx(1 / 12, rel=1e-2)


def test_cve_is_unbiased_with_blur_and_noise():
  rng = np.random.default_rng(0)
  n = 3000
  positions, _, blur = blurred_tracks(rng, n, 50)
  est = [diffusion.cve(p, DT, blur) for p in positions]
  d = np.array([e.diffusion for e in est])
  se = np.array([e.diffusion_se for e in est])
  s2 = np.array([e.localisation_variance for e in est])
  sd = d.std()
  assert d.mean() == pytest.approx(D, abs=4 * sd / math.sqrt(n))
  assert s2.mean() == pytest.approx(SIGMA2, abs=4 * s2.std() / math.sqrt(n))
  # Vestergaard's standard error matches the spread (its own sd over tracks ~ 10%).
  assert np.median(se) == pytest.approx(sd, rel=0.1)
  # Known sigma^2 and the right R: also unbiased; and the CVE is close to the Cramer-Rao bound.
  known = np.array([diffusion.cve(p, DT, blur, SIGMA2).diffusion for p in positions])
  assert known.mean() == pytest.approx(D, abs=4 * known.std() / math.sqrt(n))
  bound = diffusion.cramer_rao_diffusion(50, D, SIGMA2, blur, DT)
  # The sd of n draws is known to ~1/sqrt(2n) = 1.3%: no estimator beats the bound by more.
  assert 0.95 * bound < sd < 1.15 * bound
  # The naive MSD fit's expectation follows the blurred, noisy MSD (here blur and noise
  # nearly cancel: the trap of judging it at one D).
  lags = np.arange(1, 5) * DT
  naive = [
    diffusion.msd_fit(lags, [np.mean(np.sum((p[k:] - p[:-k]) ** 2, 1)) for k in range(1, 5)])
    for p in positions[:1000]
  ]
  predicted = diffusion.msd_fit(lags, diffusion.expected_msd(lags, D, SIGMA2, blur, DT))
  assert np.mean(naive) == pytest.approx(predicted, abs=4 * np.std(naive) / math.sqrt(1000))


def test_cve_skips_missing_frames():
  rng = np.random.default_rng(1)
  positions, _, blur = blurred_tracks(rng, 2000, 40)
  positions[:, 10] = np.nan  # a blink in every track
  d = np.array([diffusion.cve(p, DT, blur).diffusion for p in positions])
  assert d.mean() == pytest.approx(D, abs=4 * d.std() / math.sqrt(len(d)))
  assert math.isnan(diffusion.cve(positions[0, :2], DT, blur).diffusion)


def test_search_range_covers_the_steps():
  reach = track.search_range_px(2.0, 0.08, 0.1, localisation_px=0.5, quantile=0.999)
  steps = np.random.default_rng(2).normal(0, math.sqrt(2 * 2.0 * 0.08) / 0.1, (100000, 2))
  steps += np.random.default_rng(3).normal(0, 0.5 * math.sqrt(2), steps.shape)
  beyond = np.mean(np.hypot(*steps.T) > reach)
  assert beyond == pytest.approx(1e-3, abs=5e-4)


def sparse_detections(rng, n_frames=40, gap_frame=20):
  """4 QDs far apart, random walks with noise; QD 0 blinks off at ``gap_frame``."""
  centres = np.array([[10.0, 10.0], [60.0, 12.0], [12.0, 60.0], [58.0, 58.0]])
  walk = np.cumsum(rng.normal(0, 1.0, (n_frames, 4, 2)), axis=0) + centres
  rows = []
  for f in range(n_frames):
    for q in range(4):
      if q == 0 and f in (gap_frame, gap_frame + 1):
        continue
      x, y = walk[f, q] + rng.normal(0, 0.3, 2)
      rows.append((f, x, y, 10.0, q))
  return pd.DataFrame(rows, columns=["frame", "x", "y", "score", "identity"])


def test_linking_keeps_identities_and_bridges_blinks():
  detections = sparse_detections(np.random.default_rng(4))
  linked = track.link(detections.drop(columns="identity"), search_range=8.0, memory=3)
  linked = linked.merge(detections, on=["frame", "x", "y", "score"])
  assert linked.groupby("particle")["identity"].nunique().max() == 1
  assert linked["particle"].nunique() == 4
  # Without memory, the blink splits QD 0's track.
  unbridged = track.link(detections.drop(columns="identity"), search_range=8.0, memory=0)
  assert unbridged["particle"].nunique() == 5


def write_movie(path, n_frames=12, size=32, seed=5):
  """A movie from a simple simulator of its own: 2 bright Gaussian spots, Poisson noise."""
  rng = np.random.default_rng(seed)
  start = np.array([[9.0, 10.0], [22.0, 21.0]])
  walk = start + np.cumsum(rng.normal(0, 0.5, (n_frames, 2, 2)), axis=0)
  rows, cols = np.mgrid[:size, :size]
  spots = np.exp(
    -((cols - walk[..., 0, None, None]) ** 2 + (rows - walk[..., 1, None, None]) ** 2) / 8
  ).sum(1)
  frames = rng.poisson(1.0 + 30 * spots).astype(np.float32)
  if path.suffix == ".tif":
    tifffile.imwrite(path, frames)
  else:
    np.save(path, frames)
  return frames


@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_track_script_end_to_end(script, tmp_path, suffix):
  movie = tmp_path / f"movie{suffix}"
  write_movie(movie)
  tracks, table = tmp_path / "tracks.csv", tmp_path / "diffusion.csv"
  args = [f"--input={movie}", "--method=trackpy", f"--output={tracks}"]
  args += [f"--diffusion_output={table}", "--max_diffusion=1"]
  result = script("track.py", *args, *(["--plot"] if suffix == ".npy" else ["--window=6"]))
  assert result.returncode == 0, result.stderr
  if suffix == ".tif":  # windows of frames 0-5 and 6-11: both QDs', edge-weighted
    assert re.search(r"edge-corrected over [2-9]\d* windows: \d", result.stdout), result.stdout
  found = pd.read_csv(tracks)
  assert list(found.columns) == ["frame", "x", "y", "score", "particle"]
  assert found["frame"].max() == 11
  estimates = pd.read_csv(table)
  assert list(estimates.columns[:4]) == ["particle", "n_frames", "D_um2_s", "D_se_um2_s"]
  # Both QDs tracked through all 12 frames (trackpy may add short tracks of noise peaks).
  complete = found.groupby("particle").size().loc[lambda n: n == 12].index
  long = estimates[estimates["particle"].isin(complete)]
  assert len(long) >= 2
  assert np.isfinite(long["D_um2_s"]).all()
  if suffix == ".npy":
    assert (tmp_path / "tracks.png").stat().st_size > 0


def test_track_bad_inputs(script, tmp_path):
  preset = presets.get("paper")
  locator = lambda images, progress=None: [np.zeros((0, 3))] * len(images)  # noqa: E731
  out, table = str(tmp_path / "t.csv"), str(tmp_path / "d.csv")
  np.save(tmp_path / "one.npy", np.ones((1, 16, 16), np.float32))
  np.save(tmp_path / "flat.npy", np.ones((16, 16), np.float32))
  for name, needle in (("one.npy", "at least 2 frames"), ("flat.npy", "2-D")):
    with pytest.raises(ValueError, match=needle):
      track.track_file(str(tmp_path / name), out, table, locator, preset, progress=False)
  write_movie(tmp_path / "good.npy", n_frames=4)
  for interval in (-0.1, 1e-5, float("nan")):
    with pytest.raises(ValueError, match="frame_interval_s"):
      track.track_file(
        str(tmp_path / "good.npy"), out, table, locator, preset, frame_interval_s=interval
      )
  # NaN pixels, from the command line: a one-line error and the old output kept.
  frames = write_movie(tmp_path / "nan.npy", n_frames=4)
  frames[2, 3, 3] = np.nan
  np.save(tmp_path / "nan.npy", frames)
  (tmp_path / "t.csv").write_text("keep me\n")
  result = script(
    "track.py",
    f"--input={tmp_path / 'nan.npy'}",
    "--method=trackpy",
    f"--output={out}",
    f"--diffusion_output={table}",
  )
  assert_one_line_error(result, "frame 2")
  assert (tmp_path / "t.csv").read_text() == "keep me\n"
  assert not (tmp_path / "d.csv").exists()
  result = script(
    "track.py",
    f"--input={tmp_path / 'good.npy'}",
    "--method=trackpy",
    f"--output={out}",
    f"--diffusion_output={table}",
    "--frame_interval_s=-1",
  )
  assert_one_line_error(result, "frame_interval_s")


def test_field_windows_undo_the_edge_selection():
  """Fast particles leave a small field; the windows that stay are the slow-looking ones.
  Particles spread evenly far beyond a 64 x 64 px field: the plain mean of the windows'
  CVE reads low, the inclusion-weighted mean recovers D within its standard error."""
  rng = np.random.default_rng(1)
  d, dt, frames, length, size, sigma = 60.0, 0.08, 40, 20, 64, 0.3  # px^2/s, s, px
  reach = 4 * math.sqrt(2 * d * frames * dt)  # start far enough out that the density is flat
  n = 60000
  start = rng.uniform(-reach, size + reach, (n, 1, 2))
  steps = rng.normal(0, math.sqrt(2 * d * dt), (n, frames - 1, 2))
  path = np.concatenate([start, start + np.cumsum(steps, axis=1)], axis=1)
  seen = path + rng.normal(0, sigma, path.shape)
  inside = np.all((seen >= -0.5) & (seen <= size - 0.5), axis=2)
  # A track is a run of frames inside the field (a linker without memory).
  run = np.cumsum(np.concatenate([inside[:, :1], inside[:, 1:] & ~inside[:, :-1]], 1), axis=1)
  p, f = np.nonzero(inside)
  tracks = pd.DataFrame(
    {"frame": f, "x": seen[p, f, 0], "y": seen[p, f, 1], "particle": p * frames + run[p, f]}
  )
  windows = track.field_windows(tracks, length, size, size, inset_px=2.0)
  # No gaps here: each window is `length` consecutive rows.
  xy = windows.sort_values(["particle", "frame"])[["x", "y"]].to_numpy().reshape(-1, length, 2)
  weights = windows.groupby("particle")["weight"].first().to_numpy()
  est = np.array([diffusion.cve(one, dt, 0.0).diffusion for one in xy])
  plain, plain_se = est.mean(), est.std(ddof=1) / math.sqrt(len(est))
  mean, se = diffusion.weighted_mean(est, weights)
  assert len(est) > 2000
  assert plain < d - 5 * plain_se  # the selection's bias is real at this D and field
  assert abs(mean - d) < 3.5 * se, (mean, se, plain)
  assert se < 0.03 * d


def test_diffusion_bench_targets_fail_where_qdjax_is_worse_at_one_d():
  from qdjax.benchmarks import diffusion as bench

  def row(mean, rmse):
    return {"windows": 10, "mean_ratio": mean, "relative_rmse": rmse, "rmse_over_bound": 1.0}

  rows = {
    "qdjax": {"0.1": row(1.0, 0.3), "2.0": row(1.0, 0.5)},
    "trackpy": {"0.1": row(1.1, 0.4), "2.0": row(1.0, 0.4)},
  }
  targets = bench.judge(rows)
  assert targets["qdjax_mean_ratio_in_0.95_1.05_at_every_D"]
  assert not targets["qdjax_rmse_below_trackpy_at_every_D"]
  assert targets["qdjax_rmse_over_trackpy_rmse"] == pytest.approx({"0.1": 0.75, "2.0": 1.25})
  rows["qdjax"]["2.0"] = row(0.9, 0.3)
  targets = bench.judge(rows)
  assert targets["qdjax_rmse_below_trackpy_at_every_D"]
  assert not targets["qdjax_mean_ratio_in_0.95_1.05_at_every_D"]
