"""Motion populations of a movie against theory: per-QD D, confinement, immobile, directed.

All movies here share one compiled simulator: one mixture of every kind on small frames
(the frame interval is traced, so the gapped movies reuse it). Positions are read from the
true path at each frame's first sample (``start_um``), free of blur and noise.
"""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import XLA_DEFAULT_OPTIONS, assert_one_line_error, sim_params, smoke_env

from qdjax.sim import motion, movie

FRAMES = 40
MOVIES = 24
QDS = 8
MOVIE_D = 0.3  # the frame's D, taken by the population that gives none
RADIUS = 0.15  # um
SPEED = 1.0  # um/s
POPULATIONS = (
  motion.Population("free", 0.2),  # the movie's D
  motion.Population("free", 0.2, 0.1, diffusion_sigma=0.5),
  motion.Population("confined", 0.3, 0.5, radius_um=RADIUS),
  motion.Population("immobile", 0.1),
  motion.Population("directed", 0.2, 0.05, speed_um_s=SPEED),
)


def frame_params():
  return sim_params(height=8, width=8, margin_px=2.0, diffusion_um2_s=MOVIE_D, num_particles=QDS)


def mixed_params(**kwargs):
  return movie.make_params(frame_params(), FRAMES, motion=POPULATIONS, **kwargs)


@pytest.fixture(scope="module")
def mixed():
  params = mixed_params()
  return params, jax.device_get(movie.simulate_movies(jax.random.key(11), params, MOVIES))


@pytest.fixture(scope="module")
def gapped():
  """The same mixture with an unrecorded gap of 4x the recording between frames."""
  frame = frame_params()
  params = mixed_params(frame_interval_s=5 * movie.default_frame_interval(frame))
  return params, jax.device_get(movie.simulate_movies(jax.random.key(12), params, MOVIES))


def _of_kind(movies, kind):
  """[n, P] bool: the QDs of this kind."""
  return movies.motion.kind == motion.KINDS.index(kind)


def test_default_movie_is_unchanged():
  """Movies with the default motion are, bit for bit, those of the simulator before motion
  populations existed: tests/data/default_movie.npz was written by it (two movies of each
  case below, key 7), compiled with XLA's default options."""
  frame = sim_params(height=12, width=10, diffusion_um2_s=(0.1, 1.0), num_particles=(1, 3))
  cases = {
    "plain": movie.make_params(frame, 6),
    "blinking": movie.make_params(
      frame,
      6,
      frame_interval_s=2 * movie.default_frame_interval(frame),
      outside_px=3.0,
      blink_on_s=0.01,
      blink_off_s=0.005,
    ),
  }
  with np.load(Path(__file__).parent / "data" / "default_movie.npz") as reference:
    for name, params in cases.items():
      simulate = movie.simulate_movies.lower(jax.random.key(7), params, 2)
      simulate = simulate.compile(compiler_options=XLA_DEFAULT_OPTIONS)
      out = jax.device_get(simulate(jax.random.key(7), params))
      for key in reference.files:
        case, field = key.split("/")
        if case == name:
          np.testing.assert_array_equal(np.asarray(getattr(out, field)), reference[key], key)
      # Every QD is free at the movie's D.
      np.testing.assert_array_equal(
        out.motion.diffusion_um2_s, out.diffusion[:, None] + 0 * out.motion.kind
      )
      assert (out.motion.kind == 0).all()


def test_same_key_same_movie(mixed):
  params, movies = mixed
  again = jax.device_get(movie.simulate_movies(jax.random.key(11), params, MOVIES))
  for got, want in zip(jax.tree.leaves(again), jax.tree.leaves(movies), strict=True):
    np.testing.assert_array_equal(got, want)
  other = jax.device_get(movie.simulate_movies(jax.random.key(13), params, MOVIES))
  assert not np.array_equal(other.motion.population, movies.motion.population)


def test_sampled_populations_match_the_mixture():
  """Fractions within binomial error, log-normal D, uniform in-plane directions, the
  start uniform in the sphere."""
  n = 40_000
  start = np.zeros((n, 3), np.float32)
  qd = jax.device_get(
    jax.jit(motion.sample)(jax.random.key(5), motion.make_motion(POPULATIONS), MOVIE_D, start)
  )
  for i, pop in enumerate(POPULATIONS):
    share = np.mean(qd.population == i)
    assert share == pytest.approx(pop.fraction, abs=4 * math.sqrt(pop.fraction / n)), i
  np.testing.assert_array_equal(qd.kind, np.array([0, 0, 1, 2, 3])[qd.population])
  d = qd.diffusion_um2_s
  np.testing.assert_array_equal(d[qd.population == 0], np.float32(MOVIE_D))
  np.testing.assert_array_equal(d[qd.population == 3], 0.0)
  np.testing.assert_array_equal(d[qd.population == 4], np.float32(0.05))
  log_d = np.log(d[qd.population == 1])
  tolerance = 4 * 0.5 / math.sqrt(log_d.size)
  assert log_d.mean() == pytest.approx(math.log(0.1), abs=tolerance)
  assert log_d.std() == pytest.approx(0.5, abs=tolerance)
  directed = qd.population == 4
  speed = np.hypot(*qd.velocity_um_s[directed].T)
  np.testing.assert_allclose(speed, SPEED, rtol=1e-5)
  assert np.abs(qd.velocity_um_s[directed].mean(axis=0)).max() < 4 * SPEED / math.sqrt(
    2 * directed.sum()
  )
  np.testing.assert_array_equal(qd.velocity_um_s[~directed], 0.0)
  confined = qd.population == 2
  assert np.isnan(qd.radius_um[~confined]).all() and (qd.radius_um[confined] == RADIUS).all()
  # Uniform in the ball: <|r|^2> = 3 a^2 / 5 from the centre.
  r2 = np.sum((start - qd.center_um)[confined] ** 2, axis=-1)
  assert r2.max() <= RADIUS**2 * (1 + 1e-5)
  assert r2.mean() == pytest.approx(0.6 * RADIUS**2, rel=4 * math.sqrt(0.0457 / 0.36 / r2.size))


def test_movie_fractions_within_binomial_error(mixed):
  _, movies = mixed
  n = movies.motion.population.size
  for i, pop in enumerate(POPULATIONS):
    share = np.mean(movies.motion.population == i)
    sd = math.sqrt(pop.fraction * (1 - pop.fraction) / n)
    assert share == pytest.approx(pop.fraction, abs=4 * sd), (i, share)


def test_immobile_qds_stay_put(mixed, gapped):
  for _, movies in (mixed, gapped):
    still = _of_kind(movies, "immobile")
    assert still.sum() > 5
    start = np.moveaxis(movies.start_um, 1, 2)[still]  # [QDs, T, 3]
    np.testing.assert_array_equal(start, np.broadcast_to(start[:, :1], start.shape))
    centroid = np.moveaxis(movies.centroids, 1, 2)[still]
    np.testing.assert_allclose(centroid, start[..., :2] / 0.1, atol=1e-4)


def _free_steps(movies, params):
  """Per QD: mean square step per coordinate / (2 dt) over the movie, and its sample size."""
  dt = float(params.frame_interval_s)
  steps = np.diff(movies.start_um, axis=1)  # [n, T-1, P, 3]
  estimate = np.mean(steps**2, axis=(1, 3)) / (2 * dt)  # [n, P]
  return estimate, steps.shape[1] * 3


def test_free_qds_diffuse_with_their_own_d(mixed, gapped):
  """MSD = 2 D t per axis, per QD, with each QD's own D: z-scores of the per-QD estimates
  about their true D are standard normal; about their population's median they are not."""
  for params, movies in (mixed, gapped):
    estimate, samples = _free_steps(movies, params)
    truth = movies.motion.diffusion_um2_s
    free = _of_kind(movies, "free")
    ratio = estimate[free] / truth[free]
    z = (ratio - 1) / math.sqrt(2 / samples)
    assert abs(z.mean()) < 4 / math.sqrt(z.size), z.mean()
    assert 0.7 < z.std() < 1.3, z.std()
    spread = movies.motion.population == 1
    median = (estimate / 0.1)[spread]
    assert np.std((median - 1) / math.sqrt(2 / samples)) > 2  # the log-normal spread shows
    # The population without a D takes the movie's.
    np.testing.assert_array_equal(truth[movies.motion.population == 0], np.float32(MOVIE_D))


def test_directed_qds_drift_at_their_velocity(mixed, gapped):
  """<r(t) - r(0)> = v t in x, y (0 in z), with Brownian scatter 2 D t per axis."""
  for params, movies in (mixed, gapped):
    t = (FRAMES - 1) * float(params.frame_interval_s)
    directed = _of_kind(movies, "directed")
    displacement = (movies.start_um[:, -1] - movies.start_um[:, 0])[directed]  # [QDs, 3]
    velocity = movies.motion.velocity_um_s[directed]
    residual = displacement[:, :2] - velocity * t
    sd = math.sqrt(2 * 0.05 * t)
    assert np.abs(residual.mean(axis=0)).max() < 4 * sd / math.sqrt(len(residual))
    assert residual.std() == pytest.approx(sd, rel=4 / math.sqrt(2 * residual.size))
    along = np.sum(displacement[:, :2] * velocity, axis=-1) / SPEED**2 / t  # 1 on average
    assert along.mean() == pytest.approx(1.0, abs=4 * sd / SPEED / t / math.sqrt(len(along)))
    assert abs(displacement[:, 2].mean()) < 4 * sd / math.sqrt(len(residual))


def test_confined_qds_stay_in_their_sphere_and_plateau(mixed, gapped):
  """Reflected in a sphere of radius a the QD ends up uniform in the ball, so <x^2> = a^2/5
  about the centre per axis, and at lags long against a^2 / D the MSD in the imaging plane
  plateaus at 2 * 2 a^2 / 5 = 4 a^2 / 5 (0.018 um^2 here), far below the free 4 D t."""
  plateau = 4 * RADIUS**2 / 5
  for _, movies in (mixed, gapped):
    confined = _of_kind(movies, "confined")
    assert confined.sum() > 20
    start = np.moveaxis(movies.start_um, 1, 2)[confined]  # [QDs, T, 3]
    center = movies.motion.center_um[confined][:, None]
    distance = np.linalg.norm(start - center, axis=-1)
    assert distance.max() <= RADIUS * (1 + 1e-4), distance.max()
    # Relaxation time a^2 / (4.33 D) = 0.01 s, about one frame: lags of 5+ frames plateau.
    per_qd = []
    for q in start:
      lags = [np.sum((q[lag:, :2] - q[:-lag, :2]) ** 2, axis=-1) for lag in range(5, FRAMES)]
      per_qd.append(np.concatenate(lags).mean())
    per_qd = np.asarray(per_qd)
    se = float(per_qd.std()) / math.sqrt(len(per_qd))
    assert per_qd.mean() == pytest.approx(plateau, abs=4 * se), (per_qd.mean(), plateau, se)
    assert 4 * se < 0.2 * plateau  # the test can tell a plateau 20% off


def test_truth_in_files(mixed, tmp_path):
  params, movies = mixed
  arrays = movie.as_arrays(jax.tree.map(lambda x: x[0], movies), params)
  table = motion.truth_table(arrays)
  assert list(table.index) == list(range(QDS))
  np.testing.assert_array_equal(table["motion"], np.asarray(motion.KINDS)[movies.motion.kind[0]])
  np.testing.assert_allclose(table["D_um2_s"], movies.motion.diffusion_um2_s[0])
  record = movie.params_record(params)
  assert [p["kind"] for p in record["populations"]] == [p.kind for p in POPULATIONS]
  assert record["populations"][2]["radius_um"] == RADIUS
  for name in ("m.npz", "m.tif"):
    movie.save(str(tmp_path / name), arrays, record)
    saved = motion.truth_table(tmp_path / name)
    pd.testing.assert_frame_equal(saved, table, check_dtype=False, rtol=1e-6)
  truth = pd.read_csv(tmp_path / "m_truth.csv")
  assert list(truth.columns[:7]) == [
    "frame",
    "particle",
    "x",
    "y",
    "z_um",
    "present",
    "on_fraction",
  ]
  for column in ("motion", "D_um2_s", "radius_um", "speed_um_s", "vx_um_s", "vy_um_s"):
    assert column in truth
  assert len(truth) == FRAMES * QDS
  with np.load(tmp_path / "m.npz") as saved:
    assert saved["qd_motion"].dtype.kind == "U"
    assert json.loads(str(saved["params"]))["populations"][4]["speed_um_s"] == SPEED


def test_parse_populations():
  text = (
    "free:0.5:D=0.05:sigma=0.3, confined:0.3:D=0.3:radius=0.2,immobile:0.1,directed:0.1:speed=2"
  )
  pops = motion.parse_populations(text)
  assert pops == (
    motion.Population("free", 0.5, 0.05, diffusion_sigma=0.3),
    motion.Population("confined", 0.3, 0.3, radius_um=0.2),
    motion.Population("immobile", 0.1),
    motion.Population("directed", 0.1, speed_um_s=2.0),
  )
  assert motion.make_motion(pops).kinds == ("free", "confined", "immobile", "directed")
  for bad, needle in [
    ("walk:1", "kind"),
    ("free", "kind:fraction"),
    ("free:x", "fraction"),
    ("free:1:D=-1", "D"),
    ("free:1:speed=1", "speed"),
    ("confined:1:D=0.1", "radius"),
    ("confined:1:radius=0", "radius"),
    ("immobile:1:D=0.1", "immobile"),
    ("free:1:Q=1", "D=, sigma="),
  ]:
    with pytest.raises(ValueError, match=needle):
      motion.parse_populations(bad)
  with pytest.raises(ValueError, match="sum to 1"):
    motion.make_motion(motion.parse_populations("free:0.5,immobile:0.2"))


def test_simulate_script_writes_a_mixed_movie(script, tmp_path):
  common = ["--preset=paper", "--diffusion=0.5", "--num_frames=3", "--num_particles=6"]
  common += ["--config.overrides.height=12", "--config.overrides.width=10"]
  populations = "--populations=free:0.5:D=0.05:sigma=0.5,confined:0.3:radius=0.2,immobile:0.2"
  # What the files hold, not the movie's values: a smoke run (conftest.smoke_env).
  result = script(
    "simulate.py", *common, populations, f"--output={tmp_path / 'm.tif'}", env=smoke_env()
  )
  assert result.returncode == 0, result.stderr
  table = motion.truth_table(tmp_path / "m.tif")
  assert set(table["motion"]) <= {"free", "confined", "immobile"}
  assert (table.loc[table["motion"] == "confined", "D_um2_s"] == 0.5).all()  # --diffusion's
  record = json.loads((tmp_path / "m_params.json").read_text())
  assert [p["kind"] for p in record["populations"]] == ["free", "confined", "immobile"]
  bad = script("simulate.py", *common, "--populations=free:0.5", f"--output={tmp_path / 'x.tif'}")
  assert_one_line_error(bad, "--populations", "sum to 1")
  frames = [a for a in common if not a.startswith("--num_frames")]
  bad = script("simulate.py", *frames, populations, f"--output={tmp_path / 'x.npz'}")
  assert_one_line_error(bad, "--populations", "--num_frames")
