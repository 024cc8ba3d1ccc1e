"""Tissue motion and structured backgrounds against theory (qdjax.sim.tissue).

The movies here share one compiled simulator: one QD in a 24 x 32 frame under breathing,
heartbeat and drift (D and the amplitudes are traced values, so the still and zero-motion
variants reuse it). The texture is checked on the field itself, sampled at many draws.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import assert_one_line_error, sim_params, smoke_env

from qdjax.sim import movie, prior, scan, simulate, tissue
from qdjax.tracks import diffusion

D = 0.3  # um^2/s
FRAMES = 30
MOVIES = 64
PIXEL = 0.1  # um
MOTION = dict(
  breathing_um=(0.1, 0.2, 0.1),
  breathing_hz=2.0,
  heartbeat_um=(0.3, 0.0, 0.05),
  heartbeat_hz=10.0,
  drift_um_s=(0.2, -0.1, 0.0),
)


def frame_params(d=D):
  return sim_params(
    height=24,
    width=32,
    peak_photons=20.0,
    background_photons=1.0,
    margin_px=9.0,
    z_range_um=0.0,
    diffusion_um2_s=d,
    num_particles=1,
  )


def moving_params():
  return movie.make_params(frame_params(), FRAMES, tissue=tissue.make_params(**MOTION))


@pytest.fixture(scope="module")
def moving():
  params = moving_params()
  return params, jax.device_get(movie.simulate_movies(jax.random.key(3), params, MOVIES))


def test_line_truth_is_the_displacement_at_each_lines_middle(moving):
  params, movies = moving
  frame = params.frame
  times = movie.tissue_times(params)  # [T, h]
  # The middle of a line is the mean of its sample times.
  samples = np.asarray(scan.sample_times(24, 32, 1, frame.dwell_s, frame.retrace_s), np.float64)
  starts = np.arange(FRAMES)[:, None] * float(params.frame_interval_s)
  np.testing.assert_allclose(times, starts + samples.mean(axis=(1, 2)), rtol=1e-6)
  phases = movies.tissue_phase
  assert np.all((phases >= 0) & (phases < 2 * math.pi)) and np.std(phases[:, 0]) > 1
  for i in (0, 7):
    t = times[..., None]
    want = (
      np.asarray(MOTION["breathing_um"]) * np.sin(2 * np.pi * 2.0 * t + phases[i, 0])
      + np.asarray(MOTION["heartbeat_um"]) * np.sin(2 * np.pi * 10.0 * t + phases[i, 1])
      + np.asarray(MOTION["drift_um_s"]) * t
    )
    np.testing.assert_allclose(movies.tissue_um[i], want, atol=1e-5)  # float32 times
  arrays = movie.as_arrays(jax.tree.map(lambda x: x[0], movies), params)
  assert arrays["tissue_um"].shape == (FRAMES, 24, 3)
  np.testing.assert_allclose(arrays["tissue_time_s"], times)


def test_a_still_qd_in_moving_tissue_appears_where_the_tissue_carries_it(moving):
  """D = 0: the QD appears at start + d(t), line by line; under fast x motion the spot is
  sheared, each row's photon centroid at x0 + dx(t_line)."""
  params, _ = moving
  still = params.replace(frame=params.frame.replace(diffusion_um2_s=jnp.zeros(2)))
  movies = jax.device_get(movie.simulate_movies(jax.random.key(5), still, 4))
  start = movies.start_um[:, :1, 0]  # [n, 1, 3]: the QD never moves in the tissue
  np.testing.assert_allclose(movies.start_um[:, :, 0], np.broadcast_to(start, (4, FRAMES, 3)))
  np.testing.assert_allclose(
    movies.tissue_centroids[:, :, 0],
    np.broadcast_to(start[..., :2] / PIXEL, (4, FRAMES, 2)),
    atol=5e-4,
  )
  signal = movies.expected - 1.0  # minus the flat B: the QD's photons
  cols = np.arange(32)
  checked = 0
  for i in range(4):
    for f in range(0, FRAMES, 5):
      x0, y0 = start[i, 0, :2] / PIXEL
      shift = movies.tissue_um[i, f] / PIXEL  # [h, 3] px
      # Rows near the spot's middle carry most of its photons; a spot cut off by the
      # frame's edge would bias its centroid.
      x_line = x0 + shift[:, 0]
      near = np.abs(np.arange(24) - (y0 + shift[:, 1])) < 2.5
      rows = np.flatnonzero(near & (x_line > 7) & (x_line < 24))
      row = signal[i, f, rows]
      x = (row * cols).sum(axis=1) / row.sum(axis=1)
      np.testing.assert_allclose(x, x0 + shift[rows, 0], atol=0.03)
      checked += len(rows)
  assert checked > 60
  # The motion is fast: within a frame the rows' x move by more than a pixel.
  spread = movies.tissue_um[..., 0].max(axis=-1) - movies.tissue_um[..., 0].min(axis=-1)
  assert np.median(spread) > 1.5 * PIXEL


def test_subtracting_the_true_motion_gives_back_the_diffusion(moving):
  """Observed centroids minus the per-line truth (averaged over the frame's lines) are the
  tissue-frame centroids, whose steps have <dx^2> = 2 D dt (1 - 2R); the raw ones do not."""
  params, movies = moving
  dt = float(params.frame_interval_s)
  observed = movies.centroids[:, :, 0]  # [n, T, 2] px
  corrected = observed - movies.tissue_um[..., :2].mean(axis=2) / PIXEL
  np.testing.assert_allclose(corrected, movies.tissue_centroids[:, :, 0], atol=0.01)
  blur = diffusion.raster_blur_coefficient(params.frame, dt, "centroid")
  steps = np.diff(corrected * PIXEL, axis=1)
  ratio = np.mean(steps**2) / (2 * D * dt)
  tolerance = 4 * math.sqrt(2 / steps.size)
  assert ratio == pytest.approx(1 - 2 * blur, abs=tolerance), (ratio, 1 - 2 * blur)
  raw = np.mean(np.diff(observed * PIXEL, axis=1) ** 2) / (2 * D * dt)
  assert raw > 3, raw


def test_zero_motion_gives_the_movie_without_tissue_exactly(moving):
  params, _ = moving
  zero = params.replace(
    tissue=params.tissue.replace(
      breathing_um=jnp.zeros(3), heartbeat_um=jnp.zeros(3), drift_um_s=jnp.zeros(3)
    )
  )
  assert zero.tissue.moving  # the motion code runs, with zero displacement
  plain = movie.make_params(frame_params(), FRAMES)
  assert not plain.tissue.moving and not plain.tissue.structured
  key = jax.random.key(9)
  a = jax.device_get(movie.simulate_movies(key, zero, MOVIES))
  b = jax.device_get(movie.simulate_movies(key, plain, MOVIES))
  for name in ("counts", "expected", "centroids", "keypoints", "start_um", "z"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name), name)
  np.testing.assert_array_equal(b.tissue_um, 0.0)
  np.testing.assert_array_equal(b.tissue_centroids, b.centroids)


def _texture_samples(cv, length, n, offset_um=(0.0, 0.0, 0.0)):
  """T at the origin and at ``offset_um`` in n independent draws: two [n] arrays."""
  params = tissue.make_params(texture_cv=cv, texture_um=length)
  points = jnp.asarray([[0.0, 0.0, 0.0], offset_um])

  def one(key):
    return tissue.texture(params, tissue.draw(key, params), points)

  values = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), n))
  return np.asarray(values[:, 0], np.float64), np.asarray(values[:, 1], np.float64)


@pytest.mark.parametrize("cv", [0.5, 1.0])
def test_texture_has_mean_one_the_relative_variance_and_correlation_length(cv):
  n = 40000
  length = 0.4
  here, there = _texture_samples(cv, length, n, (length, 0.0, 0.0))
  # Mean 1: sd of the sample mean cv / sqrt(n).
  assert here.mean() == pytest.approx(1.0, abs=5 * cv / math.sqrt(n))
  # Relative variance cv^2: sd of the sample variance sqrt((m4 - var^2) / n).
  var = here.var()
  m4 = np.mean((here - here.mean()) ** 4)
  assert var == pytest.approx(cv**2, abs=5 * math.sqrt((m4 - var**2) / n) + 0.01 * cv**2)
  # log T is s G + const with G Gaussian-correlated: exp(-1/2) at one correlation length.
  rho = np.corrcoef(np.log(here), np.log(there))[0, 1]
  assert rho == pytest.approx(math.exp(-0.5), abs=5 * (1 - math.exp(-1)) / math.sqrt(n))
  # A wrong length is rejected: at half the distance the correlation is exp(-1/8).
  assert abs(rho - math.exp(-1 / 8)) > 0.2


def test_structured_background_of_frames():
  """A frame's background has mean B with texture, is exactly B without it, and a vessel
  band is (1 + C) times brighter along its centre line."""
  base = dict(height=8, width=8, margin_px=1.0, background_photons=3.0, num_particles=0)
  flat = sim_params(**base)
  forced = tissue.make_params(texture_cv=0.0).replace(structured=True)
  # 512 frames throughout: the textured batch runs the program compiled for ``b``.
  a = simulate.simulate_batch(jax.random.key(2), flat, 512)
  b = simulate.simulate_batch(jax.random.key(2), flat.replace(tissue=forced), 512)
  np.testing.assert_array_equal(np.asarray(b.expected), np.asarray(a.expected))
  np.testing.assert_array_equal(np.asarray(b.counts), np.asarray(a.counts))
  textured = flat.replace(tissue=tissue.make_params(texture_cv=0.5, texture_um=0.4))
  frames = jax.device_get(simulate.simulate_batch(jax.random.key(3), textured, 512))
  means = frames.expected.mean(axis=(1, 2))
  assert means.mean() == pytest.approx(3.0, abs=5 * 3.0 * 0.5 / math.sqrt(512))
  assert frames.expected.std(axis=(1, 2)).mean() > 0.3  # not flat
  # A vertical band through the centre, texture off: its profile along x is
  # B (1 + C exp(-4 ln2 u^2 / W^2)).
  band = tissue.make_params(vessel=tissue.Vessel(1.5, width_um=0.3, angle_deg=90.0))
  frame = jax.device_get(simulate.render(jax.random.key(4), flat.replace(tissue=band)))
  u = (np.arange(8) - 3.5) * PIXEL
  want = 3.0 * (1 + 1.5 * np.exp(-4 * math.log(2) * u**2 / 0.3**2))
  np.testing.assert_allclose(frame.expected, np.broadcast_to(want, (8, 8)), rtol=1e-5)


def test_bad_tissue_values_are_errors():
  for values, needle in [
    (dict(breathing_um=(1, 2)), "breathing_um"),
    (dict(heartbeat_hz=-1), "heartbeat_hz"),
    (dict(texture_cv=-0.1), "texture_cv"),
    (dict(texture_um=0), "texture_um"),
    (dict(vessel=-2.0), "vessel contrast"),
    (dict(vessel="1:x"), "vessel"),
    (dict(drift_um_s=float("nan")), "drift_um_s"),
  ]:
    with pytest.raises(ValueError, match=needle):
      tissue.make_params(**values)
  with pytest.raises(ValueError, match="tissue"):
    movie.make_params(frame_params(), 3, tissue={"breathing_um": 1})
  with pytest.raises(ValueError, match="tissue"):
    simulate.make_params(tissue={"breathing_um": 1})


def test_prior_frames_with_tissue_and_paper_frames_without():
  small = prior.Prior(frame_sizes=((12, 13),), tissue_fraction=1.0, vessel_fraction=0.5)
  assert prior.Prior().tissue_fraction == 0  # off by default: the general model's prior
  base = sim_params()
  assert base.tissue is None
  frames = jax.device_get(prior.simulate_batch(jax.random.key(0), small, base, 12, 13, 16))
  assert np.all(np.isfinite(frames.expected)) and np.all(frames.expected >= 0)
  # The background varies across the frame far more than a flat one would (0).
  empty = frames.present.sum(axis=1) == 0
  assert empty.any()
  flat = frames.expected.reshape(16, -1)
  assert np.all((flat.std(axis=1) / flat.mean(axis=1))[empty] > 0.02)


def test_presets_hold_tissue_values_off_by_default():
  from qdjax.sim import presets

  paper, invivo = presets.get("paper"), presets.get("invivo")
  assert not paper.tissue and not paper.tissue_on
  assert invivo.tissue and not invivo.tissue_on
  off = invivo.tissue_params()
  assert not off.moving and not off.structured
  on = invivo.tissue_params(on=True)
  assert on.moving and on.structured
  for name in invivo.tissue:
    assert invivo.provenance[f"tissue.{name}"]
  assert paper.sim_params(regime=1).tissue is None


def test_simulate_script_writes_a_moving_movie(script, tmp_path):
  common = ["--preset=paper", "--diffusion=0.2", "--num_frames=3", "--num_particles=1"]
  common += ["--config.overrides.height=12", "--config.overrides.width=10"]
  motion = ["--breathing_um=0,0.5,0.1", "--heartbeat_um=0.2", "--heartbeat_hz=8"]
  motion += ["--texture_cv=0.5", "--vessel=1:1:30"]
  # What the files hold, not the movie's values: a smoke run (conftest.smoke_env).
  result = script(
    "simulate.py", *common, *motion, f"--output={tmp_path / 'm.tif'}", env=smoke_env()
  )
  assert result.returncode == 0, result.stderr
  table = pd.read_csv(tmp_path / "m_tissue.csv")
  assert list(table.columns) == ["frame", "line", "time_s", "dx_um", "dy_um", "dz_um"]
  assert len(table) == 3 * 12 and table["dy_um"].abs().max() > 0
  record = json.loads((tmp_path / "m_params.json").read_text())
  assert record["tissue"]["breathing_um"] == [0.0, 0.5, 0.1]
  assert record["tissue"]["vessel_contrast"] == 1.0
  assert tifffile.imread(tmp_path / "m.tif").shape == (3, 12, 10)
  bad = script("simulate.py", *common, "--texture_um=0", f"--output={tmp_path / 'x.npz'}")
  assert_one_line_error(bad, "--texture_um", "> 0")
  bad = script("simulate.py", *common, "--breathing_um=1,2", f"--output={tmp_path / 'x.npz'}")
  assert_one_line_error(bad, "--breathing_um")
