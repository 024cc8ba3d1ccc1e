"""The cascade (qdjax.detect.cascade): the network on windows around candidates only."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qdjax.detect import cascade, inference
from qdjax.detect import model as model_lib
from qdjax.sim import data, presets


@pytest.fixture(scope="module")
def fast():
  """The shipped s4_light model (the cheapest shipped network): its locator and network."""
  locator = inference.load(model="paper_fast")
  graphdef, _ = inference._abstract_model(locator.model_config)
  return locator, nnx.merge(graphdef, locator._state)


def _support_radii(net, size: int, pixels) -> list[int]:
  """How far from each (row, col) of ``pixels`` the inputs reach that move its logit (the
  gradient's support)."""
  rows, cols = (jnp.array(p) for p in zip(*pixels, strict=True))
  frame = jax.random.normal(jax.random.key(0), (1, size, size))
  jacobian = jax.jit(jax.jacrev(lambda x: net.forward(x)["logits"][0, rows, cols]))(frame)
  radii = []
  for (row, col), grad in zip(pixels, np.asarray(jacobian)[:, 0], strict=True):
    support_rows, support_cols = np.nonzero(grad)
    radii.append(int(max(np.abs(support_rows - row).max(), np.abs(support_cols - col).max())))
  return radii


@pytest.mark.parametrize("name", ["general", "paper_fast"])
def test_receptive_radius_bounds_the_gradient_support(name):
  """On trained networks (an untrained one's zero-initialised residual branches reach
  less far than its architecture allows)."""
  locator = inference.load(model=name)
  graphdef, _ = inference._abstract_model(locator.model_config)
  net = nnx.merge(graphdef, locator._state)
  radius = cascade.receptive_radius(net)
  # Pixels at every phase of the network's stride: the support moves with the phase.
  reach = max(_support_radii(net, 96, [(44 + k, 44 + 2 * k) for k in range(net.alignment)]))
  assert reach <= radius
  # A bound, but not a loose one: an oversized margin would waste the cascade's work.
  assert radius - reach <= net.stem_stride + 2


def test_windows_give_the_whole_frame_outputs(fast):
  _, net = fast
  settings = cascade.Settings(max_tiles=12)
  image = jax.random.poisson(jax.random.key(1), 3.0, (1, 200, 232)).astype(jnp.float32)
  layout = cascade.geometry(net, 200, 232, settings)
  assert layout is not None
  normalized = model_lib.normalize(image, net.normalization)[0]
  values = jax.jit(lambda x: cascade.tile_values(x, layout, settings))(normalized)
  dense, computed = jax.jit(lambda x, v: cascade.outputs(net, x, v, layout))(normalized, values)
  whole = jax.jit(net)(image)
  computed = np.asarray(computed)
  # The 12 best tiles, including the frame's last (partial) rows and columns.
  assert computed.sum() >= 12 * 32 * 8
  for key in ("logits", "offsets", "log_sigma"):
    np.testing.assert_allclose(
      np.asarray(dense[key][0])[computed], np.asarray(whole[key][0])[computed], atol=1e-4
    )
  assert np.all(np.isneginf(np.asarray(dense["logits"][0])[~computed]))


def test_no_qd_the_network_finds_is_lost(fast):
  """On sparse simulated fields at several photon levels: every QD the whole network finds
  (a detection scoring >= 0.5 within 2 px of the truth) is found by the cascade at the same
  place and score; at the brightest level the cascade itself runs, not the fallback."""
  locator, net = fast
  settings = cascade.Settings(max_tiles=16)
  through = inference.load(model="paper_fast", cascade=settings)
  paper = presets.get("paper")
  layout = cascade.geometry(net, 256, 256, settings)
  tile_values = jax.jit(
    jax.vmap(
      lambda f: cascade.tile_values(model_lib.normalize(f[None], "mean")[0], layout, settings)
    )
  )
  found = 0
  for peak, must_cascade in ((3.0, False), (10.0, False), (40.0, True)):
    params = paper.sim_params(
      regime=1, height=256, width=256, num_particles=(4, 4), peak_photons=peak
    )
    frames = data.generate(params, 3, seed=7, chunk=1)
    values = tile_values(jnp.asarray(frames["images"]))
    ran = np.sum(np.asarray(values) > settings.threshold, axis=(1, 2)) <= layout["max_tiles"]
    if must_cascade:
      assert any(ran)
    whole, cascaded = locator(frames["images"]), through(frames["images"])
    for full, cut, truth, present in zip(
      whole, cascaded, frames["keypoints"], frames["present"], strict=True
    ):
      for qd in truth[present]:
        near = np.hypot(*(full[:, :2] - qd).T) < 2
        for hit in full[near & (full[:, 2] >= 0.5)]:
          found += 1
          gap = np.hypot(*(cut[:, :2] - hit[:2]).T)
          assert gap.min() < 1e-3, (peak, hit)
          assert abs(cut[gap.argmin(), 2] - hit[2]) < 1e-4
  assert found >= 6


def test_small_frames_run_the_whole_network(fast):
  locator, _ = fast
  through = inference.load(model="paper_fast", cascade=True)
  crops = data.generate(presets.get("paper").sim_params(regime=1), 4, seed=3)["images"]
  for a, b in zip(locator(crops), through(crops), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_general_fast_is_the_default_and_records_its_training():
  assert inference.default_model() == "general_fast"
  directory = inference.pretrained_dir("general_fast")
  info = json.loads((directory / inference.CONFIG).read_text())
  assert info["model"]["name"] == "s4_light"
  assert "experiments/configs/general.py" in info["training_command"]
  assert info["training_config"]["data"] == "prior"
  assert "paper_fast" in info["training_run"]["init"]
  assert sum(p.stat().st_size for p in directory.iterdir()) < 1e6
