"""Motion types per track and D populations over tracks, against simulation with known truth."""

import numpy as np
import pandas as pd
import pytest
from conftest import smoke_env

from qdjax.tracks import populations, tracking

DT, PIXEL, SIGMA = 0.08, 0.2, 0.03  # s, um, um


def free(rng, n, frames, d):
  steps = rng.normal(0, np.sqrt(2 * d * DT), (n, frames, 2))
  return np.cumsum(steps, axis=1) + rng.normal(0, SIGMA, (n, frames, 2))


def confined(rng, n, frames, d, radius, sub=20):
  """Brownian motion in a reflecting 3D sphere, started at its centre, seen in x, y."""
  x, out = np.zeros((n, 3)), []
  for _ in range(frames):
    for _ in range(sub):
      x = x + rng.normal(0, np.sqrt(2 * d * DT / sub), x.shape)
      r = np.linalg.norm(x, axis=1, keepdims=True)
      x = np.where(r > radius, x * (2 * radius - r) / r, x)
    out.append(x[:, :2].copy())
  return np.stack(out, 1) + rng.normal(0, SIGMA, (n, frames, 2))


def directed(rng, n, frames, d, speed):
  angle = rng.uniform(0, 2 * np.pi, n)
  v = speed * np.stack([np.cos(angle), np.sin(angle)], -1)[:, None] * DT
  return free(rng, n, frames, d) + v * np.arange(frames)[None, :, None]


def as_tracks(positions):
  n, frames, _ = positions.shape
  p, f = np.meshgrid(np.arange(n), np.arange(frames), indexing="ij")
  xy = positions / PIXEL
  return pd.DataFrame(
    {"frame": f.ravel(), "x": xy[..., 0].ravel(), "y": xy[..., 1].ravel(), "particle": p.ravel()}
  )


ANALYSIS = tracking.Analysis(frame_interval_s=DT, pixel_size_um=PIXEL, blur=0.0, estimator="cve")


def test_two_free_populations_are_recovered():
  """D = 0.05 and 0.5 um^2/s, 30% / 70%, 40-frame tracks: each D within 15%, each fraction
  within 0.1, and BIC prefers two populations to one or three."""
  rng = np.random.default_rng(0)
  table = tracking.estimate(
    as_tracks(np.concatenate([free(rng, 45, 40, 0.05), free(rng, 105, 40, 0.5)])), ANALYSIS
  )
  found = populations.fit_populations(table, ANALYSIS, immobile=False)
  assert len(found.diffusion) == 2
  assert found.diffusion == pytest.approx([0.05, 0.5], rel=0.15)
  assert found.fractions == pytest.approx([0.3, 0.7], abs=0.1)
  assert found.by_k["2"] < min(found.by_k["1"], found.by_k["3"])
  # One population: BIC keeps one.
  one = tracking.estimate(as_tracks(free(rng, 100, 40, 0.3)), ANALYSIS)
  assert len(populations.fit_populations(one, ANALYSIS, immobile=False).diffusion) == 1


def test_immobile_fraction():
  rng = np.random.default_rng(1)
  positions = np.concatenate([free(rng, 30, 40, 0.0), free(rng, 120, 40, 0.3)])
  found = populations.fit_populations(tracking.estimate(as_tracks(positions), ANALYSIS), ANALYSIS)
  assert found.immobile
  assert found.diffusion[0] == 0
  assert found.fractions[0] == pytest.approx(0.2, abs=0.05)
  assert found.diffusion[-1] == pytest.approx(0.3, rel=0.15)
  with pytest.raises(ValueError, match="at least 5 tracks"):
    populations.fit_populations(tracking.estimate(as_tracks(positions[:3]), ANALYSIS), ANALYSIS)


def test_motion_types_on_50_frame_tracks():
  """Confined (radius 0.3 um, D = 0.5) against free (D = 0.5): at least 90% told apart;
  immobile QDs are immobile; carried QDs (1 um/s) are directed; the cage's radius is
  read from the plateau; free tracks' alpha is about 1."""
  rng = np.random.default_rng(2)
  groups = {
    "confined": confined(rng, 60, 50, 0.5, 0.3),
    "free": free(rng, 60, 50, 0.5),
    "immobile": free(rng, 30, 50, 0.0),
    "directed": directed(rng, 30, 50, 0.1, 1.0),
  }
  truth = np.concatenate([[k] * len(v) for k, v in groups.items()])
  found = populations.classify(as_tracks(np.concatenate(list(groups.values()))), ANALYSIS)
  assert list(found.columns) == populations.CLASS_COLUMNS
  motion = found["motion"].to_numpy()
  confined_or_free = np.isin(truth, ["confined", "free"])
  told_apart = (motion == "free") == (truth == "free")
  assert told_apart[confined_or_free].mean() >= 0.9
  assert np.mean(motion[truth == "immobile"] == "immobile") >= 0.9
  assert np.mean(motion[truth == "directed"] == "directed") >= 0.9
  caged = found[(truth == "confined") & (motion == "confined")]
  assert caged["confinement_radius_um"].median() == pytest.approx(0.3, rel=0.2)
  assert found["alpha"][truth == "free"].median() == pytest.approx(1.0, abs=0.15)
  # Free tracks are rejected at about the test's level, not more.
  assert np.mean(motion[truth == "free"] != "free") <= 0.1


def test_populations_bench_smoke(script, tmp_path):
  """``bench.py --what=populations --quick`` runs end to end (a code path, not a figure)."""
  import json

  out = tmp_path / "pop.json"
  result = script("bench.py", "--what=populations", "--quick", f"--output={out}", env=smoke_env())
  assert result.returncode == 0, result.stderr
  record = json.loads(out.read_text())
  assert set(record["rows"]) == {"three"}
  assert all(r["tracks"] > 0 for r in record["rows"].values())
