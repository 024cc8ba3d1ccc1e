"""The keypoint detector: shapes, parameter counts, normalisation, targets and decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qdjax.detect import head, model

# One jitted forward for all tests: a compilation per frame shape, shared between tests.
_forward = nnx.jit(lambda net, images: net(images))


def _tiny():
  net = model.create("tiny", rngs=nnx.Rngs(0))
  net.eval()
  return net


SHAPES = [(2, 24, 25), (3, 8, 12), (1, 1, 1), (1, 64, 64), (2, 7, 5)]


@pytest.mark.parametrize("name", ["fast", "small", "base", "wide"])
def test_larger_presets_accept_any_frame_size(name):
  # Shapes only: abstract initialisation and evaluation, nothing is computed or compiled.
  net = nnx.eval_shape(lambda: model.create(name, rngs=nnx.Rngs(0)))
  net.eval()
  graphdef, state = nnx.split(net)
  for shape in SHAPES:
    images = jax.ShapeDtypeStruct(shape, jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, images)
    assert out["logits"].shape == shape and out["offsets"].shape == shape + (2,)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_output_shapes_on_any_frame_size(shape):
  images = jax.random.poisson(jax.random.key(1), 4.0, shape).astype(jnp.float32)
  out = _forward(_tiny(), images)
  assert out["logits"].shape == shape
  assert out["offsets"].shape == shape + (2,)
  assert np.isfinite(out["logits"]).all() and np.isfinite(out["offsets"]).all()
  found = head.decode(out)
  for key in ("x", "y", "score", "valid"):
    assert found[key].shape == (shape[0], 4)
  # A 1x1 frame has one candidate pixel: the other slots must be invalid.
  assert found["valid"].sum(axis=1).max() <= shape[1] * shape[2]


def test_parameter_counts():
  # tiny, by hand: stem 3x3x1x8 + BN(8) = 88; one BasicBlock 8->8 = 2 * (3*3*8*8 + 16)
  # = 1184; lateral 1x1 8->8 + bias = 72; hidden 3x3 8->8 + bias = 584; out 1x1 8->4 + bias
  # = 36 (presence logit, dx, dy, log sigma).
  assert model.count_params(model.create("tiny", rngs=nnx.Rngs(0))) == 88 + 1184 + 72 + 584 + 36
  # The default preset: a change here changes every shipped checkpoint's format.
  small = nnx.eval_shape(lambda: model.create("small", rngs=nnx.Rngs(0)))
  assert model.count_params(small) == 92404


def test_normalisation_ignores_gain_and_offset():
  images = jax.random.poisson(jax.random.key(2), 4.0, (2, 24, 25)).astype(jnp.float32)
  net = _tiny()
  a, b = _forward(net, images), _forward(net, 37.5 * images + 1000.0)
  np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(a["offsets"], b["offsets"], rtol=1e-4, atol=1e-4)
  flat = model.normalize(jnp.full((1, 5, 6), 7.0))
  assert np.array_equal(flat, np.zeros((1, 5, 6)))


def test_normalisation_by_hand():
  # Frame 0: median 2, deviations (-2, -1, 0, 1, 12), mean |deviation| 16/5 = 3.2.
  # Frame 1: median 10, deviations (-10, 0, 0, 5, 0), mean |deviation| 15/5 = 3.
  images = jnp.array([[[0.0, 1.0, 2.0, 3.0, 14.0]], [[0.0, 10.0, 10.0, 15.0, 10.0]]])
  out = np.asarray(model.normalize(images))
  np.testing.assert_allclose(out[0, 0], np.array([-2, -1, 0, 1, 12]) / 3.2, rtol=1e-6)
  np.testing.assert_allclose(out[1, 0], np.array([-10, 0, 0, 5, 0]) / 3.0, rtol=1e-6)
  # Per frame: median 0, mean absolute value 1.
  np.testing.assert_allclose(np.median(out, axis=(1, 2)), 0.0, atol=1e-7)
  np.testing.assert_allclose(np.abs(out).mean(axis=(1, 2)), 1.0, rtol=1e-6)


def _tiny_locator(**kwargs):
  from qdjax.detect import inference

  weights = nnx.split(_tiny())[1].to_pure_dict()
  return inference.Locator({"name": "tiny"}, {}, weights, **kwargs)


def test_flat_and_one_pixel_frames_yield_no_valid_detections():
  locator = _tiny_locator()
  one_pixel = np.array([[[0.0]], [[3.0]], [[250.0]]], np.float32)
  assert not locator.detect(one_pixel)["valid"].any()
  assert all(d.shape == (0, 3) for d in locator(one_pixel))
  flat = np.full((2, 9, 11), 4.0, np.float32)
  noise = np.random.default_rng(0).poisson(4.0, (1, 9, 11)).astype(np.float32)
  found = locator.detect(np.concatenate([flat, noise]))
  assert not found["valid"][:2].any() and found["valid"][2].any()


def test_targets_one_hot_at_nearest_pixel_with_offsets_around_it():
  keypoints = jnp.array([[[3.4, 5.6], [np.nan, np.nan]]])
  present = jnp.array([[True, False]])
  heat, offsets, mask = head.targets(keypoints, present, 10, 12, offset_radius=1)
  assert heat.shape == (1, 10, 12) and heat.sum() == 1 and heat[0, 6, 3] == 1
  assert mask[0].sum() == 9 and mask[0, 5:8, 2:5].all()
  np.testing.assert_allclose(offsets[0, 6, 3], [0.4, -0.4], atol=1e-6)
  np.testing.assert_allclose(offsets[0, 5, 2], [1.4, 0.6], atol=1e-6)
  assert (offsets[0][~np.asarray(mask[0])] == 0).all()


def test_targets_two_keypoints_take_the_nearest():
  keypoints = jnp.array([[[2.0, 2.0], [4.0, 2.0]]])
  heat, offsets, mask = head.targets(keypoints, jnp.array([[True, True]]), 6, 8, 1)
  assert heat[0, 2, 2] == 1 and heat[0, 2, 4] == 1 and heat.sum() == 2
  np.testing.assert_allclose(offsets[0, 2, 1], [1.0, 0.0])  # nearer to (2, 2)
  np.testing.assert_allclose(offsets[0, 2, 5], [-1.0, 0.0])  # nearer to (4, 2)


def _planted(h=20, w=24):
  logits = np.full((1, h, w), -12.0, np.float32)
  offsets = np.zeros((1, h, w, 2), np.float32)
  logits[0, 5, 7] = 4.0  # strong QD at row 5, column 7
  offsets[0, 5, 7] = (0.3, -0.2)
  logits[0, 15, 20] = 0.0  # weaker QD
  offsets[0, 15, 20] = (-0.45, 0.1)
  return {"logits": jnp.asarray(logits), "offsets": jnp.asarray(offsets)}


def test_decode_returns_planted_coordinates_in_score_order():
  found = jax.device_get(jax.jit(head.decode)(_planted()))
  assert found["valid"][0, :2].all()
  np.testing.assert_allclose([found["x"][0, 0], found["y"][0, 0]], [7.3, 4.8], atol=1e-6)
  np.testing.assert_allclose([found["x"][0, 1], found["y"][0, 1]], [19.55, 15.1], atol=1e-6)
  # score = presence probability summed over the 3x3 window around the peak.
  sig = lambda v: 1 / (1 + np.exp(-v))
  np.testing.assert_allclose(found["score"][0, 0], sig(4.0) + 8 * sig(-12.0), rtol=1e-5)
  assert found["score"][0, 0] > found["score"][0, 1] > found["score"][0, 2]
  # NMS: no other candidate within the 3x3 window of either peak.
  rest = np.stack([found["x"][0, 2:], found["y"][0, 2:]], -1)
  for peak in ([7, 5], [20, 15]):
    assert (np.abs(rest - peak).max(axis=1) >= 2 - 0.5).all()
  kept = head.decode(_planted(), min_score=0.3)
  assert kept["valid"][0].tolist() == [True, True, False, False]
  lists = head.to_lists(kept)
  assert len(lists) == 1 and lists[0].shape == (2, 3)
  np.testing.assert_allclose(lists[0][0, :2], [7.3, 4.8], atol=1e-6)


def test_decode_pads_frames_smaller_than_k():
  out = {"logits": jnp.zeros((1, 2, 2)), "offsets": jnp.zeros((1, 2, 2, 2))}
  found = head.decode(out, min_detections=6)
  assert found["x"].shape == (1, 6) and not found["valid"][0, 4:].any()


def test_loss_parts_vanish_on_a_perfect_prediction_and_are_finite_without_qds():
  keypoints = jnp.array([[[7.3, 4.8]]])
  present = jnp.array([[True]])
  heat, offsets, mask = head.targets(keypoints, present, 20, 24)
  sigma = jnp.full((1, 20, 24), -1.0)
  good = {"logits": jnp.where(heat > 0, 16.0, -16.0), "offsets": offsets, "log_sigma": sigma}
  bad = {
    "logits": jnp.zeros((1, 20, 24)),
    "offsets": jnp.zeros((1, 20, 24, 2)),
    "log_sigma": sigma,
  }
  total, parts = head.loss(good, keypoints, present)
  assert parts["presence"] < 1e-3 and parts["offset"] < 1e-6
  # Zero error: the uncertainty NLL is 2 log sigma.
  np.testing.assert_allclose(parts["uncertainty"], -2.0, rtol=1e-6)
  assert head.loss(bad, keypoints, present)[1]["presence"] > 100
  # L1 of the offsets (dx, dy) over the 3x3 pixels around (7, 5), by hand.
  dx = 7.3 - np.arange(6, 9)
  dy = 4.8 - np.arange(4, 7)
  by_hand = (np.abs(dx)[None, :] + np.abs(dy)[:, None]).mean()
  np.testing.assert_allclose(head.loss(bad, keypoints, present)[1]["offset"], by_hand, rtol=1e-6)
  # An empty frame: no offsets to train, and the loss stays finite.
  empty = head.loss(bad, jnp.full((1, 1, 2), jnp.nan), jnp.array([[False]]))[0]
  assert np.isfinite(empty)


def test_decode_scales_with_the_field_and_refines_like_the_dense_formula():
  # 30 planted peaks on a 200 x 240 field: a fixed cap of 4 would lose 26 of them.
  rng = np.random.default_rng(0)
  h, w = 200, 240
  logits = np.full((1, h, w), -12.0, np.float32)
  grid = np.stack(np.meshgrid(np.arange(5, h - 5, 8), np.arange(5, w - 5, 8)), -1)
  rows, cols = grid.reshape(-1, 2)[rng.choice(grid.size // 2, 30, replace=False)].T
  logits[0, rows, cols] = rng.uniform(0.0, 4.0, 30)
  logits[0, rows, cols + 1] = -1.0  # a shoulder, so the refinement has votes to weigh
  offsets = rng.uniform(-0.5, 0.5, (1, h, w, 2)).astype(np.float32)
  outputs = {"logits": jnp.asarray(logits), "offsets": jnp.asarray(offsets)}
  found = jax.device_get(jax.jit(lambda o: head.decode(o, refine_window=3, min_score=0.2))(outputs))
  assert found["x"].shape == (1, head.num_slots(h, w, 256.0, 4)) == (1, 188)
  assert found["valid"].sum() == 30
  # The refined position is the presence-weighted mean of the 3 x 3 votes (pixel +
  # offset), computed here densely in NumPy for every pixel.
  prob = 1 / (1 + np.exp(-logits[0].astype(np.float64)))
  vx = np.arange(w)[None, :] + offsets[0, ..., 0]
  vy = np.arange(h)[:, None] + offsets[0, ..., 1]
  valid = found["valid"][0]
  for x, y in zip(found["x"][0][valid], found["y"][0][valid], strict=True):
    r = c = None
    for rr, cc in zip(rows, cols, strict=True):
      if abs(rr - y) < 1.5 and abs(cc - x) < 1.5:
        r, c = rr, cc
    assert r is not None
    win = np.s_[r - 1 : r + 2, c - 1 : c + 2]
    weight = prob[win].sum()
    np.testing.assert_allclose(x, (prob[win] * vx[win]).sum() / weight, atol=1e-4)
    np.testing.assert_allclose(y, (prob[win] * vy[win]).sum() / weight, atol=1e-4)


def test_space_to_depth_round_trips_and_cell_presets_keep_full_resolution():
  x = jnp.arange(2 * 8 * 12 * 1, dtype=jnp.float32).reshape(2, 8, 12, 1)
  cells = model.space_to_depth(x, 4)
  assert cells.shape == (2, 2, 3, 16)
  np.testing.assert_array_equal(cells[0, 1, 2], x[0, 4:8, 8:12, 0].reshape(-1))
  np.testing.assert_array_equal(model.depth_to_space(cells, 4), x)
  net = model.create("tiny", stem_stride=4, normalization="mean", rngs=nnx.Rngs(0))
  net.eval()
  images = jax.random.poisson(jax.random.key(3), 4.0, (2, 23, 26)).astype(jnp.float32)
  out = _forward(net, images)
  assert out["logits"].shape == (2, 23, 26) and out["offsets"].shape == (2, 23, 26, 2)
  # The mean normalisation is invariant to a detector's gain and offset too.
  shifted = _forward(net, 3.0 * images + 250.0)
  np.testing.assert_allclose(out["logits"], shifted["logits"], rtol=1e-4, atol=1e-4)
