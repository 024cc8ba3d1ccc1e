"""Movies against theory: continuous paths, the blur coefficient R, blinking, determinism.

All movies here share one compiled simulator (frame size, QD count and frame count are
the static shape; D, the frame interval and blinking are traced values).
"""

import json
import math

import jax
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import assert_one_line_error, sim_params, smoke_env

from qdjax.sim import movie
from qdjax.tracks import diffusion

D = 0.3  # um^2/s
FRAMES = 40
MOVIES = 96


def frame_params():
  return sim_params(
    width=24,
    peak_photons=20.0,
    background_photons=1.0,
    margin_px=9.0,
    z_range_um=0.0,
    diffusion_um2_s=D,
    num_particles=1,
  )


@pytest.fixture(scope="module")
def movies():
  """(params, movies) at the default interval."""
  params = movie.make_params(frame_params(), FRAMES)
  return params, jax.device_get(movie.simulate_movies(jax.random.key(1), params, MOVIES))


@pytest.fixture(scope="module")
def gapped_movies():
  """(params, movies) with an unrecorded gap: the interval is 3x the recording."""
  frame = frame_params()
  params = movie.make_params(
    frame, FRAMES, frame_interval_s=3 * movie.default_frame_interval(frame)
  )
  return params, jax.device_get(movie.simulate_movies(jax.random.key(2), params, MOVIES))


def test_paths_are_continuous_across_frames_and_gaps(gapped_movies):
  params, movies = gapped_movies
  dt = float(params.frame_interval_s)
  start = movies.start_um  # [n, T, 1, 3], all three coordinates diffuse
  for lag in (1, 4):
    # Non-overlapping displacements are independent: their mean square has rel. sd sqrt(2/N).
    steps = np.diff(start[:, ::lag], axis=1)
    ratio = np.mean(steps**2) / (2 * D * lag * dt)
    tolerance = 4 * math.sqrt(2 / steps.size)
    assert ratio == pytest.approx(1.0, abs=tolerance), (lag, ratio, tolerance)


def _lag_one(positions):
  """Per-coordinate <dx^2>, <dx_f dx_{f+1}> pooled over movies; positions [n, T, d], NaN
  where not measured (only steps between measured frames count)."""
  steps = np.diff(positions, axis=1)
  pairs = steps[:, :-1] * steps[:, 1:]
  return np.nanmean(steps**2), np.nanmean(pairs), int(np.isfinite(pairs).sum())


def _check_blur(positions, dt, blur, label, d=D):
  m2, m11, n = _lag_one(positions)
  # Var and lag-1 covariance of blurred Brownian positions (no noise): 2 D dt (1 - 2R), 2 D dt R.
  # The covariance's mean has sd ~ 2 D dt / sqrt(n): R is known to about 1/sqrt(n).
  tolerance = 4 / math.sqrt(n)
  assert m11 / (2 * d * dt) == pytest.approx(blur, abs=tolerance), (label, m11 / (2 * d * dt))
  assert m2 / (2 * d * dt) == pytest.approx(1 - 2 * blur, abs=4 * tolerance), label


def test_centroid_blur_coefficient_matches_simulation(movies, gapped_movies):
  for params, frames in (movies, gapped_movies):
    dt = float(params.frame_interval_s)
    blur = diffusion.raster_blur_coefficient(params.frame, dt, "centroid")
    assert blur == pytest.approx(diffusion.centroid_blur_closed_form(params.frame, dt), rel=1e-3)
    centroids_um = frames.centroids[:, :, 0] * 0.1
    _check_blur(centroids_um, dt, blur, "centroid")


def test_localiser_sees_the_local_blur_coefficient(movies):
  """A photon-weighted centroid of the noise-free image measures the QD on the lines near
  it: its R in x is the derivation's 'local' one (line weights g), in y the 'local_y' one
  (weights (r - y)^2 g, 1.75 times larger), both well below the trajectory centroid's."""
  params, _ = movies
  slow = 0.05
  params = params.replace(frame=params.frame.replace(diffusion_um2_s=np.full(2, slow, np.float32)))
  rows, cols = np.mgrid[:24, :24]
  positions = []
  for k in range(4):  # 1024 movies: R per axis to +-0.018 (4 sd), half of R_y - R_x
    frames = jax.device_get(movie.simulate_movies(jax.random.key(4 + 10 * k), params, 256))
    signal = np.clip(frames.expected - 1.0, 0, None)  # minus B: the QD's photons
    mass = signal.sum(axis=(2, 3))
    x = (signal * cols).sum(axis=(2, 3)) / mass
    y = (signal * rows).sum(axis=(2, 3)) / mass
    # Keep movies whose QD stayed well inside (the centroid of a cut-off spot is biased).
    inside = np.all((frames.centroids[:, :, 0] > 6) & (frames.centroids[:, :, 0] < 17), axis=-1)
    assert inside.mean() > 0.5
    positions.append(np.where(inside[..., None], np.stack([x, y], -1), np.nan) * 0.1)
  positions = np.concatenate(positions)
  dt = float(params.frame_interval_s)
  local_x, local_y = diffusion.localiser_blur(params.frame, dt)
  centroid = diffusion.raster_blur_coefficient(params.frame, dt, "centroid")
  assert local_x < local_y < centroid / 2
  assert local_y / local_x == pytest.approx(0.987 * math.sqrt(math.pi), rel=0.05)
  _check_blur(positions[..., :1], dt, local_x, "local x", slow)
  _check_blur(positions[..., 1:], dt, local_y, "local y", slow)
  # y is not blurred like x: the x coefficient is rejected for y.
  _, m11, n = _lag_one(positions[..., 1:])
  assert abs(m11 / (2 * slow * dt) - local_x) > 4 / math.sqrt(n)


def test_blinking_follows_the_two_state_process(movies):
  params, _ = movies
  blinking = params.replace(blink_on_s=np.float32(0.05), blink_off_s=np.float32(0.025))
  frames = jax.device_get(movie.simulate_movies(jax.random.key(3), blinking, MOVIES))
  # Stationary on-probability 2/3; frames of one movie are correlated over ~0.017 s / 0.036 s,
  # so count about one independent sample per frame.
  on = frames.on_fraction.mean()
  assert on == pytest.approx(2 / 3, abs=4 * math.sqrt(2 / 9 / (MOVIES * FRAMES)) * 2)
  assert 0 < frames.present.mean() < 1
  # An off QD emits nothing: frames with the QD off all frame have a flat expected image.
  off = frames.on_fraction[:, :, 0] == 0
  assert off.any()
  np.testing.assert_allclose(frames.expected[off], 1.0, atol=1e-6)


def test_same_key_same_movie(movies):
  params, frames = movies
  one = movie.render(jax.random.split(jax.random.key(1), MOVIES)[5], params)
  np.testing.assert_array_equal(np.asarray(one.counts), frames.counts[5])
  assert frames.counts.shape == (MOVIES, FRAMES, 24, 24)


def test_bad_movie_values():
  frame = frame_params()
  with pytest.raises(ValueError, match="num_frames"):
    movie.make_params(frame, 0)
  with pytest.raises(ValueError, match="frame_interval_s"):
    movie.make_params(frame, 5, frame_interval_s=-1.0)
  with pytest.raises(ValueError, match="frame_interval_s"):
    movie.make_params(frame, 5, frame_interval_s=1e-3)


def test_simulate_script_writes_movies(script, tmp_path):
  scope = tmp_path / "scope.json"  # blinking named in the preset
  scope.write_text(json.dumps({"base": "paper", "blink_on_s": 0.02, "blink_off_s": 0.01}))
  common = [f"--preset={scope}", "--diffusion=0.5", "--num_frames=3", "--num_particles=2"]
  common += ["--config.overrides.height=12", "--config.overrides.width=10"]
  # What the files hold, not the movie's values: a smoke run (conftest.smoke_env).
  result = script("simulate.py", *common, f"--output={tmp_path / 'm.tif'}", env=smoke_env())
  assert result.returncode == 0, result.stderr
  assert tifffile.imread(tmp_path / "m.tif").shape == (3, 12, 10)
  truth = pd.read_csv(tmp_path / "m_truth.csv")
  assert len(truth) == 6 and set(truth["particle"]) == {0, 1}
  record = json.loads((tmp_path / "m_params.json").read_text())
  assert record["num_frames"] == 3
  assert record["blink_on_s"] == pytest.approx(0.02) and record["blink_off_s"] == pytest.approx(
    0.01
  )
  bad = script("simulate.py", *common, "--frame_interval_s=-1", f"--output={tmp_path / 'x.npz'}")
  assert_one_line_error(bad, "frame_interval_s")


def test_movie_npz_and_tif_hold_the_same_movie(movies, tmp_path):
  params, frames = movies
  arrays = movie.as_arrays(jax.tree.map(lambda x: x[0], frames), params)
  record = movie.params_record(params)
  movie.save(str(tmp_path / "m.npz"), arrays, record)
  movie.save(str(tmp_path / "m.tif"), arrays, record)
  with np.load(tmp_path / "m.npz") as saved:
    np.testing.assert_array_equal(saved["images"], tifffile.imread(tmp_path / "m.tif"))
    assert saved["keypoints"].shape == (FRAMES, 1, 2)
    assert json.loads(str(saved["params"]))["frame_interval_s"] == pytest.approx(
      float(params.frame_interval_s)
    )
  truth = pd.read_csv(tmp_path / "m_truth.csv")
  np.testing.assert_allclose(truth["x"], arrays["centroids"][:, 0, 0], atol=1e-4)
