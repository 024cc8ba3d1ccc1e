"""Diffusion estimators against simulation with known truth; linking; track.py end to end."""

import math
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import assert_one_line_error

from qdjax.sim import presets
from qdjax.tracks import diffusion, populations, tracking
from qdjax.tracks import files as track_files

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


def test_cve_bridges_missing_frames():
  """Tracks with blinks (a third of their frames missing, some two in a row): D and sigma^2
  stay unbiased, and every track with 3 or more detections has a finite D."""
  rng = np.random.default_rng(1)
  n = 3000
  positions, _, blur = blurred_tracks(rng, n, 40)
  positions[rng.random(positions.shape[:2]) < 0.33] = np.nan
  est = [diffusion.cve(p, DT, blur) for p in positions]
  d = np.array([e.diffusion for e in est])
  s2 = np.array([e.localisation_variance for e in est])
  assert np.isfinite(d).all()
  assert d.mean() == pytest.approx(D, abs=4 * d.std() / math.sqrt(n))
  assert s2.mean() == pytest.approx(SIGMA2, abs=4 * s2.std() / math.sqrt(n))
  assert math.isnan(diffusion.cve(positions[0, :2], DT, blur).diffusion)
  three = np.array([[0.0, 0.0], [np.nan, np.nan], [0.1, 0.0], [np.nan, np.nan], [0.1, 0.2]])
  assert math.isfinite(diffusion.cve(three, DT, blur).diffusion)


def test_cve_per_axis_blur():
  """x and y blurred differently (as a raster scan's localiser sees them): each axis's D is
  unbiased with its own R, and a common R would bias the other."""
  rng = np.random.default_rng(7)
  x, _, rx = blurred_tracks(rng, 3000, 30, exposed=0.2)
  y, _, ry = blurred_tracks(rng, 3000, 30, exposed=0.9)
  positions = np.concatenate([x[..., :1], y[..., 1:]], axis=-1)
  est = [diffusion.cve(p, DT, (rx, ry)) for p in positions]
  for axis in (0, 1):
    d = np.array([e.diffusion_axes[axis] for e in est])
    assert d.mean() == pytest.approx(D, abs=4 * d.std() / math.sqrt(len(d)))
  s2 = np.array([e.localisation_variance_axes for e in est])
  assert s2[:, 1].mean() == pytest.approx(SIGMA2, abs=4 * s2[:, 1].std() / math.sqrt(len(s2)))
  wrong = np.array([diffusion.cve(p, DT, rx).localisation_variance_axes[1] for p in positions])
  assert abs(wrong.mean() - SIGMA2) > 10 * wrong.std() / math.sqrt(len(wrong))


def test_mle_beats_the_cve_where_noise_dominates():
  """sigma = 0.2 um against sqrt(D dt) = 0.09 um: the CVE's spread is far above the
  Cramer-Rao bound; the MLE's is near it, and it stays unbiased."""
  rng = np.random.default_rng(8)
  d_true, sigma2, n = 0.1, 0.04, 400
  positions, _, blur = blurred_tracks(rng, n, 40, d=d_true, sigma2=sigma2)
  cve = np.array([diffusion.cve(p, DT, blur).diffusion for p in positions])
  mle = [diffusion.mle_steps(*diffusion.steps(p), DT, blur) for p in positions]
  d_mle = np.array([e.diffusion for e in mle])
  bound = diffusion.cramer_rao_diffusion(40, d_true, sigma2, blur, DT)
  assert cve.std() > 1.5 * bound
  assert d_mle.std() < 1.35 * bound
  assert d_mle.mean() == pytest.approx(d_true, abs=4 * d_mle.std() / math.sqrt(n))
  assert {e.method for e in mle} == {"mle"}
  # Its standard error is the bound at the estimate: close to the spread.
  assert np.median([e.diffusion_se for e in mle]) == pytest.approx(d_mle.std(), rel=0.3)


def test_ensemble_is_unbiased_on_short_tracks():
  """An inverse-variance weight (~1/D^2) reads low on short tracks; the weight by
  displacements does not, and its clustered SE matches the spread of the mean."""
  rng = np.random.default_rng(9)
  means, ses = [], []
  for _ in range(40):
    positions, _, blur = blurred_tracks(rng, 30, 8)
    rows = []
    for particle, p in enumerate(positions):
      e = diffusion.cve(p, DT, blur)
      rows.append((particle, 8, e.diffusion, e.diffusion_axes[0], e.diffusion_axes[1]))
    table = pd.DataFrame(rows, columns=["particle", "n_detections", "D_um2_s", "D_x_um2_s",
                                        "D_y_um2_s"])  # fmt: skip
    ens = tracking.ensemble(table)
    means.append(ens["D_um2_s"])
    ses.append(ens["D_se_um2_s"])
  assert np.mean(means) == pytest.approx(D, abs=4 * np.std(means) / math.sqrt(len(means)))
  assert np.median(ses) == pytest.approx(np.std(means), rel=0.3)


def test_search_range_covers_the_steps():
  reach = tracking.search_range_px(2.0, 0.08, 0.1, localisation_px=0.5, quantile=0.999)
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
  linked = tracking.link(detections.drop(columns="identity"), search_range=8.0, memory=3)
  linked = linked.merge(detections, on=["frame", "x", "y", "score"])
  assert linked.groupby("particle")["identity"].nunique().max() == 1
  assert linked["particle"].nunique() == 4
  # Without memory, the blink splits QD 0's tracking.
  unbridged = tracking.link(detections.drop(columns="identity"), search_range=8.0, memory=0)
  assert unbridged["particle"].nunique() == 5


def test_detections_too_dense_to_link_give_a_one_line_error():
  """A frame of noise peaks that trackpy cannot link even at a tenth of the range is a
  one-line ValueError that says what to do, not trackpy's chain of exceptions."""
  rng = np.random.default_rng(0)
  n = 300
  detections = pd.DataFrame(
    {"frame": np.repeat([0, 1, 2], n), "x": rng.uniform(0, 10, 3 * n)}
  ).assign(y=rng.uniform(0, 10, 3 * n), score=1.0)
  with pytest.raises(ValueError, match=r"too dense to link \(300 a frame.*min_score") as e:
    tracking.link(detections, search_range=8.0)
  assert "\n" not in str(e.value)


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
  args += [f"--diffusion_output={table}"] + (["--max_diffusion=1"] if suffix == ".tif" else [])
  extra = ["--plot"] if suffix == ".npy" else ["--window=6", "--background=off"]
  result = script("track.py", *args, *extra)
  assert result.returncode == 0, result.stderr
  if suffix == ".tif":  # windows of frames 0-5 and 6-11: both QDs', edge-weighted
    assert re.search(r"edge-corrected over [2-9]\d* windows: \d", result.stdout), result.stdout
    assert "background" not in result.stdout  # not even estimated
  found = pd.read_csv(tracks)
  assert list(found.columns) == ["frame", "x", "y", "score", "particle"]
  assert found["frame"].max() == 11
  estimates = pd.read_csv(table)
  assert list(estimates.columns) == tracking.DIFFUSION_COLUMNS + populations.CLASS_COLUMNS[1:]
  assert (estimates["n_detections"] <= estimates["n_frames_spanned"]).all()
  # Both QDs tracked through all 12 frames (trackpy may add short tracks of noise peaks).
  complete = found.groupby("particle").size().loc[lambda n: n == 12].index
  long = estimates[estimates["particle"].isin(complete)]
  assert len(long) >= 2
  assert np.isfinite(long["D_um2_s"]).all()
  if suffix == ".npy":
    assert (tmp_path / "tracks.png").stat().st_size > 0
    drift = pd.read_csv(tmp_path / "tracks_drift.csv")
    assert list(drift.columns) == ["frame", "drift_x_px", "drift_y_px", "tracks"]
    assert len(drift) == 12
    tissue = pd.read_csv(tmp_path / "tracks_tissue.csv")
    assert list(tissue.columns[:5]) == ["frame", "line", "time_s", "dx_px", "dy_px"]
    assert (tmp_path / "tracks_tissue.png").stat().st_size > 0
    assert "tissue motion not corrected" in result.stdout  # a flat background: nothing to read
    assert "background left as it is" in result.stdout  # 12 frames: too few to read it


def test_track_bad_inputs(script, tmp_path):
  preset = presets.get("paper")
  locator = lambda images, progress=None: [np.zeros((0, 3))] * len(images)  # noqa: E731
  out, table = str(tmp_path / "t.csv"), str(tmp_path / "d.csv")
  np.save(tmp_path / "one.npy", np.ones((1, 16, 16), np.float32))
  np.save(tmp_path / "flat.npy", np.ones((16, 16), np.float32))
  for name, needle in (("one.npy", "at least 2 frames"), ("flat.npy", "2-D")):
    with pytest.raises(ValueError, match=needle):
      track_files.track_file(str(tmp_path / name), out, table, locator, preset, progress=False)
  write_movie(tmp_path / "good.npy", n_frames=4)
  for interval in (-0.1, 1e-5, float("nan")):
    with pytest.raises(ValueError, match="frame_interval_s"):
      track_files.track_file(
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
  windows = tracking.field_windows(tracks, length, size, size, inset_px=2.0)
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
  from benchmarks import diffusion as bench

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


def test_score_threshold_splits_noise_from_spots():
  rng = np.random.default_rng(10)
  noise = np.exp(rng.normal(math.log(0.005), 1.0, 2000))
  spots = np.exp(rng.normal(math.log(0.8), 0.3, 300))
  cut = tracking.score_threshold(np.concatenate([noise, spots]))
  assert 0.03 < cut < 0.4
  assert np.mean(spots >= cut) > 0.99 and np.mean(noise >= cut) < 0.01
  # One population (a localiser that thresholds already): nothing is cut.
  assert tracking.score_threshold(spots) is None
  assert tracking.score_threshold(spots[:5]) is None


def test_unsplit_scores_are_cut_at_the_localisers_default():
  """A movie whose scores do not split (a few QDs among many noise peaks falling off
  smoothly) is cut at the localiser's own default, not kept whole; a split, or a given
  cut, comes first; trackpy's detections (it thresholds itself) are kept."""
  from qdjax.detect import inference
  from qdjax.localize import locator, mle
  from qdjax.localize import trackpy as trackpy_locator

  rng = np.random.default_rng(11)
  smooth = np.exp(rng.uniform(math.log(0.005), 0.0, 5000))  # log-uniform: one broad mode
  assert tracking.score_threshold(smooth) is None
  model_cut = locator.default_min_score(inference.Locator)
  assert model_cut == 0.25 and locator.default_min_score(mle.Locator) == 5.0
  assert locator.default_min_score(trackpy_locator.Locator) is None
  assert locator.default_min_score(object()) is None
  assert tracking.choose_min_score(smooth, None, model_cut) == (
    0.25,
    "the localiser's default (scores not bimodal)",
  )
  assert tracking.choose_min_score(smooth, None, None) == (None, "none (scores not bimodal)")
  split = np.concatenate([np.exp(rng.normal(math.log(0.005), 1.0, 2000)), np.full(300, 0.8)])
  cut, source = tracking.choose_min_score(split, None, model_cut)
  assert source == "score split" and 0.03 < cut < 0.4
  assert tracking.choose_min_score(smooth, 0.6, model_cut) == (0.6, "given")
  with pytest.raises(ValueError, match="nan"):
    tracking.choose_min_score(smooth, math.nan, model_cut)


def clutter(rng, num_frames, size, qds, step_px, clutter_per_frame):
  """Detections of ``qds`` random walks (Gaussian steps of sd ``step_px`` per axis) plus
  uniform false detections; [frame, x, y, score]."""
  walk = rng.uniform(0, size, (1, qds, 2)) + np.cumsum(
    rng.normal(0, step_px, (num_frames, qds, 2)), axis=0
  )
  rows = []
  for f in range(num_frames):
    inside = np.all((walk[f] > -0.5) & (walk[f] < size - 0.5), axis=1)
    for x, y in walk[f][inside]:
      rows.append((f, x, y, 1.0))
    for x, y in rng.uniform(-0.5, size - 0.5, (rng.poisson(clutter_per_frame), 2)):
      rows.append((f, x, y, 1.0))
  return pd.DataFrame(rows, columns=["frame", "x", "y", "score"])


@pytest.mark.parametrize("step_px", [0.5, 1.5, 4.0])
def test_step_scale_is_fitted_without_a_d_range(step_px):
  """The step's scale from pair distances of consecutive frames, with as many false
  detections as QDs: within 10% at slow and fast steps, so the link range follows D."""
  rng = np.random.default_rng(11)
  detections = clutter(rng, 60, 128, 20, step_px, 20)
  found = tracking.step_scale(detections, 128, 128)
  assert found.source == "fit"
  assert found.scale_px == pytest.approx(step_px, rel=0.1)
  assert found.search_range_px == pytest.approx(
    max(tracking.rayleigh_quantile(found.scale_px), 1.0)
  )
  few = tracking.step_scale(detections[detections["frame"] < 1], 128, 128)
  assert few.source == "fallback"


def _walk_tracks(rng, num_tracks, num_frames, step_px, drift_px=0.0):
  steps = rng.normal(0, step_px, (num_tracks, num_frames, 2)) + drift_px
  xy = np.cumsum(steps, axis=1) + 100
  p, f = np.meshgrid(np.arange(num_tracks), np.arange(num_frames), indexing="ij")
  return pd.DataFrame(
    {"frame": f.ravel(), "x": xy[..., 0].ravel(), "y": xy[..., 1].ravel(), "particle": p.ravel()}
  )


def test_common_motion_is_found_only_where_there_is_some():
  """No drift: the test applies on about alpha of movies. A drift of 0.3 px per frame
  against 1 px steps: found, and after subtracting it D is unbiased (the sqrt(N / (N-1))
  restores what the mean took)."""
  rng = np.random.default_rng(12)
  applied = [tracking.common_motion(_walk_tracks(rng, 8, 50, 1.0), 50).applied for _ in range(300)]
  assert sum(applied) <= 3
  analysis = tracking.Analysis(frame_interval_s=1.0, pixel_size_um=1.0, blur=0.0, estimator="cve")
  ratios, totals = [], []
  for _ in range(40):
    tracks = _walk_tracks(rng, 8, 50, 1.0, drift_px=0.3)
    motion = tracking.common_motion(tracks, 50)
    assert motion.applied
    totals.append(motion.offset_px[-1])
    table = tracking.estimate(tracking.subtract_motion(tracks, motion), analysis)
    ratios.append(tracking.ensemble(table)["D_um2_s"] / 0.5)
  # 49 steps, each a mean of 8 unit-sd steps: the total is known to sqrt(49 / 8) px.
  assert np.mean(totals, axis=0) == pytest.approx([0.3 * 49] * 2, abs=4 * math.sqrt(49 / 8 / 40))
  assert np.mean(ratios) == pytest.approx(1.0, abs=4 * np.std(ratios) / math.sqrt(len(ratios)))
  # Without the sqrt(N / (N - 1)) correction, D would read 1/8 low: the test can tell.
  assert 4 * np.std(ratios) / math.sqrt(len(ratios)) < 0.125


@pytest.mark.parametrize("d", [0.05, 0.5])
def test_defaults_on_movies_of_another_simulator(d):
  """Every default of ``track_movie`` (the shipped model, the score split, the fitted link
  range) on movies of a NumPy raster-scan simulator that shares no code with qdjax: the
  per-track D of tracks of >= 20 detections averages near the truth, none is NaN, and
  there are not many more such tracks than QDs. (At D = 0.5 the true positions cut the same
  way read about 0.87: fast QDs leave the 96 px field, the long tracks are the slow ones.)"""
  import independent_sim

  from qdjax.localize import locator

  preset = presets.get("paper")
  locate = locator.make("model", preset=preset)
  ratios, qds = [], 0
  for seed in (0, 1):
    movie, truth, interval = independent_sim.movie(seed, frames=60, qds=10, diffusion_um2_s=d)
    result = tracking.track_movie(movie, locate, preset, frame_interval_s=interval)
    long = result.diffusion[result.diffusion["n_detections"] >= 20]
    assert np.isfinite(long["D_um2_s"]).all()
    assert len(long) <= 2 * 10
    ratios.extend(long["D_um2_s"] / d)
    qds += 10
  assert len(ratios) >= qds / 2
  assert 0.75 <= np.mean(ratios) <= 1.2, np.mean(ratios)


def test_estimator_is_chosen_per_movie_by_its_localisation_error():
  """'auto' takes the MLE where the pooled sigma^2 / (D dt) - 2R exceeds 1, else the CVE;
  the choice is the same for every track of the call."""
  rng = np.random.default_rng(13)

  def table(sigma2):
    positions, _, blur = blurred_tracks(rng, 20, 30, d=0.1, sigma2=sigma2)
    n, frames, _ = positions.shape
    p, f = np.meshgrid(np.arange(n), np.arange(frames), indexing="ij")
    tracks = pd.DataFrame(
      {"frame": f.ravel(), "x": positions[..., 0].ravel(), "y": positions[..., 1].ravel(),
       "particle": p.ravel()}
    )  # fmt: skip
    analysis = tracking.Analysis(frame_interval_s=DT, pixel_size_um=1.0, blur=blur)
    return tracking.estimate(tracks, analysis)

  assert set(table(0.04)["estimator"]) == {"mle"}  # sigma 0.2 um against sqrt(D dt) 0.09 um
  assert set(table(1e-4)["estimator"]) == {"cve"}


def test_blind_bench_smoke(script, tmp_path):
  """``bench.py --what=blind --quick`` runs end to end (a code path, not a figure)."""
  import json

  out = tmp_path / "blind.json"
  # The suite's flags, not SMOKE_XLA: mostly registration, which ran faster so (conftest).
  result = script("bench.py", "--what=blind", "--quick", f"--output={out}")
  assert result.returncode == 0, result.stderr
  rows = json.loads(out.read_text())["rows"]
  assert set(rows) == {"0.05", "0.5"} and all(r["long_tracks"] > 0 for r in rows.values())


def test_the_readmes_tissue_example_is_corrected(script, tmp_path):
  """The README's tissue-motion example, its two commands as given: 1 um of breathing
  along y (0.5 um in z) and a 0.25 um heartbeat along x, y and z over a textured
  background. The motion is read and corrected, and D comes back within 20 % of the true
  0.2 um^2/s (uncorrected it reads 3.6x; the registration once lost the tissue on this
  movie, fitting the texture's change with depth at every shift)."""
  movie = tmp_path / "moving.tif"
  result = script(
    "simulate.py", "--preset=invivo", "--diffusion=0.2", "--num_frames=100",
    "--num_particles=8", "--config.overrides.height=96", "--config.overrides.width=96",
    "--breathing_um=0,1,0.5", "--heartbeat_um=0.25", "--texture_cv=0.5", "--seed=3",
    f"--output={movie}",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-2000:]
  result = script(
    "track.py", f"--input={movie}", "--preset=invivo", f"--output={tmp_path / 't.csv'}",
    f"--diffusion_output={tmp_path / 'd.csv'}",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-2000:]
  assert "tissue motion corrected" in result.stdout, result.stdout
  edge = re.search(r"edge-corrected over \d+ windows: ([0-9.]+)", result.stdout)
  assert edge and 0.8 < float(edge.group(1)) / 0.2 < 1.2, result.stdout
