"""Physics of the simulator against theory, with tolerances from the sample size."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error, sim_params

from qdjax import io
from qdjax.localize import trackpy as trackpy_baseline
from qdjax.sim import data, detector, presets, scan, simulate

# Frames per batch of the default small frame (``sim_params()``, any traced values): one
# compiled program serves every test that draws such a batch (running 4000 frames costs far
# less than compiling a program for another size).
BATCH = 4000


def static_positions(p, xy_um, z_um=0.0):
  """[1, h, w, K, 3] positions of one QD held still."""
  point = jnp.array([xy_um[0], xy_um[1], z_um], jnp.float32)
  return jnp.broadcast_to(point, (1, p.height, p.width, p.substeps, 3))


# --- beam timing ----------------------------------------------------------------------


def test_pixel_times_follow_the_raster():
  h, w, dwell, retrace = 4, 5, 2e-6, 1.1e-3
  start = np.asarray(scan.pixel_start_times(h, w, dwell, retrace), np.float64)
  for r in range(h):
    for c in range(w):
      assert start[r, c] == pytest.approx(r * (w * dwell + retrace) + c * dwell, rel=1e-6)
  times = np.asarray(scan.sample_times(h, w, 4, dwell, retrace), np.float64)
  # Samples sit at (k + 1/2)/K of each dwell (float32 absolute times: ~1e-9 s resolution).
  expected = (np.arange(4) + 0.5) / 4 * dwell
  np.testing.assert_allclose(times[2, 3] - start[2, 3], expected, atol=2e-9)


def test_beam_sweeps_each_pixel_once_left_to_right():
  a, k = 0.1, 4
  x_start, x_end = (np.asarray(v) for v in scan.beam_sweep_um(5, k, a))
  np.testing.assert_allclose(x_start[:, 0], (np.arange(5) - 0.5) * a, atol=1e-7)
  np.testing.assert_allclose(x_end[:, -1], (np.arange(5) + 0.5) * a, atol=1e-7)
  # Slices tile the line with no gap or overlap, at constant speed.
  flat_start, flat_end = x_start.reshape(-1), x_end.reshape(-1)
  np.testing.assert_allclose(flat_start[1:], flat_end[:-1], atol=1e-7)
  np.testing.assert_allclose(flat_end - flat_start, a / k, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(scan.beam_rows_um(3, a)), [0, a, 2 * a], atol=1e-7)


def test_time_steps_are_the_two_normal_distributions():
  h, w, k, dwell, retrace = 3, 4, 2, 2e-6, 1.1e-3
  dt = np.asarray(scan.sample_time_steps(h, w, k, dwell, retrace), np.float64)
  times = np.asarray(scan.sample_times(h, w, k, dwell, retrace), np.float64).reshape(-1)
  np.testing.assert_allclose(dt[1:], np.diff(times), rtol=1e-3, atol=2e-9)
  first_of_line = np.arange(w * k, h * w * k, w * k)
  np.testing.assert_allclose(dt[first_of_line], retrace + dwell / k, rtol=1e-5)
  within = np.setdiff1d(np.arange(1, h * w * k), first_of_line)
  np.testing.assert_allclose(dt[within], dwell / k, rtol=1e-5)
  assert dt[0] == 0


# --- Brownian motion ------------------------------------------------------------------


def test_msd_is_2_d_dt_per_axis_on_both_time_steps():
  d, k = 1.5, 2
  p = sim_params(height=6, width=5, substeps=k, diffusion_um2_s=d)
  keys = jax.random.split(jax.random.key(0), 4000)
  start = jnp.zeros((1, 3))
  paths = jax.vmap(lambda key: simulate.brownian_paths(key, p, d, start))(keys)
  steps = np.diff(np.asarray(paths, np.float64).reshape(len(keys), -1, 3), axis=1)
  dt = np.asarray(scan.sample_time_steps(6, 5, k, p.dwell_s, p.retrace_s), np.float64)[1:]
  for mask in (np.isclose(dt, float(p.dwell_s) / k), dt > float(p.dwell_s)):
    increments = steps[:, mask, :]  # [frames, steps, 3]
    msd = (increments**2).mean(axis=(0, 1))
    theory = 2 * d * dt[mask][0]
    n = increments.shape[0] * increments.shape[1]
    # Var of a mean of n squared normals: 2 sigma^4 / n; allow 5 standard errors.
    np.testing.assert_allclose(msd, theory, rtol=5 * math.sqrt(2 / n))
    # Increments are centred.
    np.testing.assert_allclose(increments.mean(axis=(0, 1)), 0, atol=5 * math.sqrt(theory / n))


def test_whole_frame_displacement_variance():
  d = 0.3
  p = sim_params(diffusion_um2_s=d)
  keys = jax.random.split(jax.random.key(1), 3000)
  paths = jax.vmap(lambda key: simulate.brownian_paths(key, p, d, jnp.zeros((1, 3))))(keys)
  end = np.asarray(paths[:, 0, -1, -1, -1], np.float64)
  times = np.asarray(scan.sample_times(24, 25, 1, p.dwell_s, p.retrace_s), np.float64)
  duration = times[-1, -1, -1] - times[0, 0, 0]
  np.testing.assert_allclose((end**2).mean(0), 2 * d * duration, rtol=5 * math.sqrt(2 / 3000))


def test_diffusion_range_is_log_uniform():
  p = sim_params(diffusion_um2_s=(0.1, 10.0))
  draws = np.log(
    np.asarray(
      jax.vmap(lambda k: simulate.sample_diffusion(k, p))(
        jax.random.split(jax.random.key(2), 20000)
      )
    )
  )
  assert draws.min() >= math.log(0.1) - 1e-5 and draws.max() <= math.log(10.0) + 1e-5
  u = (draws - math.log(0.1)) / (math.log(10.0) - math.log(0.1))
  # Uniform on [0, 1]: mean 1/2 and variance 1/12, within 5 standard errors.
  assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / len(u))
  assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / len(u))


# --- image formation ------------------------------------------------------------------


def test_static_in_focus_photon_total_matches_analytic_sum():
  p = sim_params(height=40, width=40, substeps=1)
  lam = simulate.expected_image(static_positions(p, (2.0, 1.9)), jnp.array([True]), p)
  a, s = 0.1, 0.2
  # sum over columns of the swept average = (1/a) * integral = sqrt(2 pi) s / a; sum over
  # rows of the Gaussian at integer multiples of a = sqrt(2 pi) s / a up to exp(-2 pi^2
  # s^2 / a^2) ~ 1e-34 (Poisson summation).
  theory = 4.0 * 40 * 40 + 3.0 * 2 * math.pi * s**2 / a**2
  assert float(lam.sum()) == pytest.approx(theory, rel=2e-5)


def test_out_of_focus_dims_by_the_axial_gaussian():
  p = sim_params(height=40, width=40, background_photons=0.0)
  active = jnp.array([True])
  focus = simulate.expected_image(static_positions(p, (2.0, 2.0), 0.0), active, p)
  off = simulate.expected_image(static_positions(p, (2.0, 2.0), 0.5), active, p)
  np.testing.assert_allclose(off, focus * math.exp(-(0.5**2) / (2 * 0.6**2)), rtol=1e-4, atol=1e-7)


def test_exact_sweep_at_k1_equals_large_k_point_sampling():
  """The sampled mean over K beam samples converges to the exact sweep integral."""
  p = sim_params(height=12, width=12, substeps=1)
  x0, y0 = 0.537, 0.612
  lam = simulate.expected_image(static_positions(p, (x0, y0)), jnp.array([True]), p)
  big_k = 512
  beam_x = (np.arange(12)[:, None] - 0.5 + (np.arange(big_k) + 0.5) / big_k) * 0.1
  beam_y = np.arange(12)[:, None] * 0.1
  psf_x = np.exp(-((x0 - beam_x) ** 2) / (2 * 0.2**2)).mean(-1)
  psf_y = np.exp(-((y0 - beam_y[:, 0]) ** 2) / (2 * 0.2**2))
  reference = 4.0 + 3.0 * psf_y[:, None] * psf_x[None, :]
  np.testing.assert_allclose(lam, reference, rtol=2e-5)


def test_centroid_of_static_spot_is_the_keypoint():
  p = sim_params(height=40, width=40, margin_px=12.0, diffusion_um2_s=0.0, z_range_um=0.0)
  frames = simulate.simulate_batch(jax.random.key(3), p, 16)
  signal = np.asarray(frames.expected, np.float64) - 4.0
  rows, cols = np.mgrid[:40, :40]
  total = signal.sum((1, 2))
  cx = (signal * cols).sum((1, 2)) / total
  cy = (signal * rows).sum((1, 2)) / total
  np.testing.assert_allclose(cx, frames.keypoints[:, 0, 0], atol=2e-3)
  np.testing.assert_allclose(cy, frames.keypoints[:, 0, 1], atol=2e-3)


def second_moment(frames):
  """Mean squared distance of the spot's signal from its keypoint, px^2."""
  signal = np.clip(np.asarray(frames.expected, np.float64) - 4.0, 0, None)
  h, w = signal.shape[1:]
  rows, cols = np.mgrid[:h, :w]
  kp = np.asarray(frames.keypoints[:, 0], np.float64)
  r2 = (cols - kp[:, 0, None, None]) ** 2 + (rows - kp[:, 1, None, None]) ** 2
  return (signal * r2).sum((1, 2)) / signal.sum((1, 2))


def test_blur_grows_with_diffusion():
  moments = []
  for d in (0.0, 0.5, 3.0):
    p = sim_params(height=40, width=40, margin_px=12.0, diffusion_um2_s=d)
    moments.append(second_moment(simulate.simulate_batch(jax.random.key(4), p, 400)))
  means = [m.mean() for m in moments]
  sems = [m.std() / math.sqrt(len(m)) for m in moments]
  # At D = 0 the spot is the PSF, 2 (s/a)^2 = 8 px^2, plus the beam's sweep across each
  # pixel along x: the variance of U(-1/2, 1/2), 1/12 px^2. The expected image has no
  # noise, so the tolerance is far below that 1/12.
  assert means[0] == pytest.approx(2 * 2.0**2 + 1 / 12, abs=1e-3)
  assert means[1] > means[0] + 5 * sems[1]
  assert means[2] > means[1] + 5 * math.hypot(sems[1], sems[2])


def test_counts_are_poisson_around_the_expected_image():
  p = sim_params(peak_photons=20.0, diffusion_um2_s=0.3)
  frames = simulate.simulate_batch(jax.random.key(5), p, BATCH)
  counts = np.asarray(frames.counts, np.float64)
  lam = np.asarray(frames.expected, np.float64)
  assert np.all(counts == np.round(counts)) and counts.min() >= 0
  z = (counts - lam) / np.sqrt(lam)
  n = z.size
  assert abs(z.mean()) < 5 / math.sqrt(n)  # mean = lambda
  assert abs((z**2).mean() - 1) < 5 * math.sqrt(2 / n)  # variance = lambda
  # Bright pixels too (variance tracks lambda, not a constant).
  bright = lam > 10
  assert bright.sum() > 1000
  assert abs((z[bright] ** 2).mean() - 1) < 5 * math.sqrt(2 / bright.sum())


# --- particles, ground truth, keys ----------------------------------------------------


def test_start_positions_are_uniform_in_the_margin_box():
  p = sim_params(diffusion_um2_s=0.0, margin_px=2.0)
  frames = simulate.simulate_batch(jax.random.key(6), p, BATCH)
  x = np.asarray(frames.keypoints[:, 0, 0], np.float64)
  y = np.asarray(frames.keypoints[:, 0, 1], np.float64)
  assert x.min() >= 2 - 1e-4 and x.max() <= 22 + 1e-4
  assert y.min() >= 2 - 1e-4 and y.max() <= 21 + 1e-4
  for v, lo, hi in ((x, 2, 22), (y, 2, 21)):
    sd = (hi - lo) / math.sqrt(12)
    assert abs(v.mean() - (lo + hi) / 2) < 5 * sd / math.sqrt(len(v))
    assert abs(v.std() - sd) < 0.03 * sd
  # Consecutive frames are independent.
  assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 5 / math.sqrt(len(x))


def test_same_key_same_frames_different_keys_differ():
  p = sim_params()
  a = simulate.simulate_batch(jax.random.key(7), p, BATCH)
  b = simulate.simulate_batch(jax.random.key(7), p, BATCH)
  c = simulate.simulate_batch(jax.random.key(8), p, BATCH)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert not np.allclose(a.counts, c.counts)
  # Frames within a batch differ from each other.
  assert len({float(v) for v in a.keypoints[:8, 0, 0]}) == 8


def test_render_is_frame_i_of_the_batch():
  p = sim_params()
  batch = simulate.simulate_batch(jax.random.key(13), p, BATCH)
  one = simulate.render(jax.random.split(jax.random.key(13), BATCH)[4], p)
  np.testing.assert_array_equal(batch.counts[4], one.counts)
  np.testing.assert_allclose(batch.expected[4], one.expected, rtol=1e-6)
  np.testing.assert_allclose(batch.keypoints[4], one.keypoints, rtol=1e-6)


@pytest.mark.parametrize("mean", [0.05, 2.0, 7.5, 30.0, 63.9, 64.1, 250.0])
def test_poisson_sampler_moments(mean):
  """The inversion sampler and its large-mean fallback: mean, variance and P(0)."""
  n = 40000
  counts = np.asarray(
    detector.poisson_batch(
      jax.random.split(jax.random.key(14), 40), jnp.full((40, 1000), mean, jnp.float32)
    )
  )
  assert counts.shape == (40, 1000) and np.all(counts == np.round(counts))
  assert abs(counts.mean() - mean) < 5 * math.sqrt(mean / n)
  # Var of the sample variance of a Poisson: (mu + 2 mu^2 ... ) ~ (mu + 2 mu^2) / n.
  assert abs(counts.var() - mean) < 5 * math.sqrt((mean + 2 * mean**2) / n)
  p0 = math.exp(-mean)
  assert abs((counts == 0).mean() - p0) < 5 * math.sqrt(p0 * (1 - p0) / n) + 1e-9


def test_dataset_frames_do_not_depend_on_chunking():
  p = sim_params()
  whole = data.generate(p, 10, seed=3, chunk=10)
  pieces = data.generate(p, 10, seed=3, chunk=4)
  tail = data.generate(p, 4, seed=3, start=6)
  np.testing.assert_array_equal(whole["images"], pieces["images"])
  np.testing.assert_array_equal(whole["keypoints"][6:], tail["keypoints"])


def test_empty_and_crowded_frames():
  empty = simulate.simulate_batch(jax.random.key(9), sim_params(num_particles=0), 4)
  assert empty.keypoints.shape == (4, 0, 2)
  np.testing.assert_allclose(empty.expected, 4.0)
  crowd = simulate.simulate_batch(jax.random.key(9), sim_params(num_particles=(0, 3)), 600)
  counts = np.asarray(crowd.present).sum(1)
  assert set(np.unique(counts)) == {0, 1, 2, 3}
  # Absent QDs have NaN keypoints, present ones are finite and inside the frame.
  kp = np.asarray(crowd.keypoints)
  assert np.all(np.isnan(kp[~np.asarray(crowd.present)]))
  inside = kp[np.asarray(crowd.present)]
  assert np.all((inside >= -0.5) & (inside[:, :1] <= 24.5) & (inside[:, 1:] <= 23.5))
  # Photon totals add: the mean signal grows with the number of QDs.
  signal = np.asarray(crowd.expected).sum((1, 2)) - 4.0 * 600
  assert signal[counts == 3].mean() > 2.5 * signal[counts == 1].mean()


def test_keypoint_leaving_the_frame_is_not_present():
  p = sim_params(height=8, width=8, margin_px=0.0, diffusion_um2_s=10.0)
  frames = simulate.simulate_batch(jax.random.key(10), p, 500)
  kp = np.asarray(
    simulate.trajectory_centroid(jnp.zeros((1, 8, 8, 1, 3)) + jnp.array([-0.06, 0.3, 0.0]), p)[0]
  )
  assert not bool(simulate.inside_frame(jnp.asarray(kp), p)[0])
  assert 0 < np.asarray(frames.present).mean() < 1


def test_present_boundary_is_half_a_pixel_outside_every_edge():
  """Present iff the centroid lies in [-1/2, w-1/2] x [-1/2, h-1/2]: probed 0.01 px inside
  and outside each of the four edges, through the centroid of a QD held still there."""
  p = sim_params(height=8, width=11, margin_px=0.0)
  mid_x, mid_y = 5.0, 3.0
  for inside, delta in ((True, 0.49), (False, 0.51)):
    for x, y in (
      (-delta, mid_y),  # left
      (p.width - 1 + delta, mid_y),  # right
      (mid_x, -delta),  # top
      (mid_x, p.height - 1 + delta),  # bottom
    ):
      xy_um = (x * p.pixel_size_um, y * p.pixel_size_um)
      keypoints = simulate.trajectory_centroid(static_positions(p, xy_um), p)[0]
      np.testing.assert_allclose(keypoints[0], (x, y), atol=1e-4)
      assert bool(simulate.inside_frame(keypoints, p)[0]) == inside, (x, y)


# --- gradients ------------------------------------------------------------------------


def test_gradients_match_finite_differences():
  with jax.enable_x64(True):
    p = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), sim_params(height=10, width=10))
    key = jax.random.key(11)
    weights = jax.random.normal(jax.random.key(12), (10, 10), jnp.float64)
    start = jnp.array([[0.45, 0.52, 0.1]], jnp.float64)

    def loss(theta):
      q = p.replace(
        peak_photons=theta[0],
        background_photons=theta[1],
        sigma_xy_um=theta[2],
        sigma_z_um=theta[3],
        pixel_size_um=theta[4],
      )
      positions = simulate.brownian_paths(key, q, theta[5], start + theta[6:9])
      return jnp.sum(weights * simulate.expected_image(positions, jnp.array([True]), q))

    theta = jnp.array([3.0, 4.0, 0.2, 0.6, 0.1, 0.8, 0.0, 0.0, 0.0], jnp.float64)
    grad = jax.jit(jax.grad(loss))(theta)
    # Central differences, all 2 x 9 evaluations in one compiled program.
    steps = jnp.diag(1e-6 * jnp.maximum(1.0, jnp.abs(theta)))
    values = jax.jit(jax.vmap(loss))(jnp.concatenate([theta + steps, theta - steps]))
    fd = (values[: len(theta)] - values[len(theta) :]) / (2 * jnp.diag(steps))
    for i in range(len(theta)):
      assert float(grad[i]) == pytest.approx(float(fd[i]), rel=1e-5, abs=1e-7), i


# --- validation and the command line --------------------------------------------------


@pytest.mark.parametrize(
  "name, value",
  [
    ("diffusion_um2_s", -0.1),
    ("diffusion_um2_s", float("nan")),
    ("diffusion_um2_s", float("inf")),
    ("peak_photons", -1.0),
    ("background_photons", float("nan")),
    ("sigma_xy_um", 0.0),
    ("sigma_z_um", -0.6),
    ("pixel_size_um", 0.0),
    ("pixel_size_um", float("inf")),
    ("height", 0),
    ("width", -3),
    ("substeps", 0),
  ],
)
def test_bad_parameters_are_rejected_by_name(name, value):
  with pytest.raises(ValueError, match=name):
    sim_params(**{name: value})


def test_preset_regimes_and_provenance():
  preset = presets.get("paper")
  d1, d2, d3 = preset.regimes
  assert d3 == pytest.approx(10 * d1) and d1 < d2 < d3
  lo, hi = preset.train_diffusion
  assert lo <= d1 and hi >= d3
  for name in ("pixel_size_um", "peak_photons", "background_photons", "regimes", "sigma_z_um"):
    assert preset.provenance[name]
  assert float(preset.sim_params(regime=2).diffusion_um2_s[0]) == pytest.approx(d2)
  with pytest.raises(ValueError, match="unknown preset"):
    presets.get("nope")


def test_simulate_script_end_to_end(tmp_path, script):
  out = tmp_path / "frames.npz"
  result = script(
    "simulate.py",
    "--preset=paper",
    "--regime=2",
    "--num_images=5",
    "--seed=1",
    f"--output={out}",
    "--plot",
  )
  assert result.returncode == 0, result.stderr
  saved = np.load(out)
  # The command-line contract: float32 images.
  assert saved["images"].shape == (5, 24, 25) and saved["images"].dtype == np.float32
  assert saved["keypoints"].shape == (5, 1, 2) and saved["keypoints"].dtype == np.float32
  assert saved["present"].dtype == bool and saved["diffusion"].shape == (5,)
  record = json.loads(str(saved["params"]))
  for name in (
    "height",
    "pixel_size_um",
    "sigma_xy_um",
    "peak_photons",
    "num_particles",
    "regimes",
    "train_diffusion",
    "epsilons_px",
    "substeps",
    "margin_px",
  ):
    assert name in record
  assert record["diffusion_um2_s"] == pytest.approx(presets.get("paper").regimes[1])
  assert record["images_dtype"] == "float32" and record["images_unit"] == "photons"
  assert (tmp_path / "frames.png").stat().st_size > 1000
  # Same seed through the library gives the same frames, count for count.
  again = data.generate(presets.get("paper").sim_params(regime=2), 5, seed=1)
  np.testing.assert_array_equal(again["images"], saved["images"])
  for name in ("expected", "keypoints", "present", "z", "diffusion"):
    np.testing.assert_array_equal(again[name], saved[name])
  # The frame readers give the float32 counts back.
  (start, block), *rest = io.iter_chunks(io.open_frames(out), 8)
  assert not rest and block.dtype == np.float32
  np.testing.assert_array_equal(block, again["images"])
  # --integer_counts: the same counts, exactly, in the smallest type (the paper's fit uint8).
  small = tmp_path / "counts.npz"
  args = ("--preset=paper", "--regime=2", "--num_images=5", "--seed=1", "--integer_counts")
  result = script("simulate.py", *args, f"--output={small}")
  assert result.returncode == 0, result.stderr
  counts = np.load(small)
  assert counts["images"].dtype == np.uint8
  assert json.loads(str(counts["params"]))["images_dtype"] == "uint8"
  np.testing.assert_array_equal(counts["images"], saved["images"])
  assert small.stat().st_size < out.stat().st_size


def test_written_counts_equal_the_simulator_counts_in_the_stored_dtype(tmp_path):
  # Bright enough that some counts pass 255: the file needs uint16. (Four frames: the call
  # size the chunking test compiles already.)
  p = sim_params(peak_photons=400.0, diffusion_um2_s=0.0)
  out = tmp_path / "bright.npz"
  arrays = data.write(out, p, 4, seed=2, integer_counts=True)
  frames = simulate.simulate_indices(2, p, np.arange(4))
  saved = np.load(out)
  assert 255 < frames.counts.max() < 65536 and saved["images"].dtype == np.uint16
  np.testing.assert_array_equal(saved["images"], np.asarray(frames.counts))
  np.testing.assert_array_equal(arrays["images"], np.asarray(frames.counts))
  assert json.loads(str(saved["params"]))["images_dtype"] == "uint16"
  # Loaders read it: trackpy finds the same spots in the file as in the simulator's frames.
  locator = trackpy_baseline.Locator(workers=1)
  located, expected = locator(io.open_frames(out)), locator(np.asarray(frames.counts))
  for mine, theirs in zip(located, expected, strict=True):
    np.testing.assert_array_equal(mine, theirs)


def test_stored_images_dtypes():
  counts = np.array([[[0.0, 255.0]]], np.float32)
  assert data.stored_images(counts, "poisson").dtype == np.uint8
  assert data.stored_images(counts + 1, "poisson").dtype == np.uint16
  assert data.stored_images(counts + 70000, "poisson").dtype == np.uint32
  np.testing.assert_array_equal(data.stored_images(counts + 70000, "poisson"), counts + 70000)
  assert data.stored_images(np.zeros((0, 2, 2), np.float32), "poisson").dtype == np.uint8
  pmt = np.array([[[-3.25, 17.5]]], np.float32)
  assert data.stored_images(pmt, "pmt").dtype == np.float32
  np.testing.assert_array_equal(data.stored_images(pmt, "pmt"), pmt)


@pytest.mark.parametrize(
  "args, needle",
  [
    (["--diffusion=-1"], "diffusion_um2_s"),
    (["--diffusion=abc"], "--diffusion"),
    (["--regime=2", "--config.overrides.height=0"], "height"),
    (["--regime=2", "--bogus=1"], "bogus"),
    (["--regime=2", "--preset=nope"], "nope"),
  ],
)
def test_simulate_script_bad_input(tmp_path, script, args, needle):
  out = tmp_path / "x.npz"
  result = script("simulate.py", *args, f"--output={out}", "--num_images=2")
  assert_one_line_error(result, needle)
  assert not out.exists()


def test_simulate_script_keeps_existing_output_on_failure(tmp_path, script):
  out = tmp_path / "x.npz"
  out.write_bytes(b"precious")
  result = script("simulate.py", "--diffusion=nan", f"--output={out}")
  assert_one_line_error(result, "diffusion_um2_s")
  assert out.read_bytes() == b"precious"


def test_npz_writer_streams_an_array_in_pieces_and_fails_whole(tmp_path):
  rows = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
  with io.npz_writer(tmp_path / "a.npz") as npz:
    with npz.stream("rows", rows.shape, np.float32) as write:
      write(rows[:4])
      write(rows[4:])
    npz.add("label", "six rows")
  with np.load(tmp_path / "a.npz") as saved:
    np.testing.assert_array_equal(saved["rows"], rows)
    assert str(saved["label"]) == "six rows"
  # A stream that ends short is an error, and the file written before stays as it was.
  with pytest.raises(ValueError, match="rows"):
    with io.npz_writer(tmp_path / "a.npz") as npz:
      with npz.stream("rows", rows.shape, np.float32) as write:
        write(rows[:4])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]
  with np.load(tmp_path / "a.npz") as saved:
    np.testing.assert_array_equal(saved["rows"], rows)
