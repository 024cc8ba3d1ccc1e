"""The chunk-pad-jit helper: fixed call sizes, padding cut off, rows kept in order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qdjax import chunks


def recording(sizes):
  """A jitted per-row function that records the leading size of every call."""

  @jax.jit
  def fn(tree):
    return {"sum": tree["a"].sum(axis=1) + tree["b"], "twice": 2 * tree["a"]}

  def call(tree):
    sizes.append(len(tree["a"]))
    return fn(tree)

  return call


@pytest.mark.parametrize(
  ("n", "chunk", "powers_of_two", "expected"),
  [
    (7, 3, True, [3, 3, 3]),  # the last chunk of 1 row padded to 3
    (5, 1024, True, [8]),  # short input: the next power of two, at least 8
    (20, 1024, True, [32]),
    (20, 1024, False, [20]),  # own length: no padding
    (10, 4, False, [4, 4, 4]),
  ],
)
def test_map_chunks_pads_to_one_call_size_and_trims(n, chunk, powers_of_two, expected):
  rng = np.random.default_rng(n)
  tree = {"a": rng.normal(size=(n, 4)).astype(np.float32), "b": np.arange(n, dtype=np.float32)}
  sizes = []
  bar = type("Bar", (), {"n": 0, "update": lambda self, k: setattr(self, "n", self.n + k)})()
  out = chunks.map_chunks(recording(sizes), tree, chunk, powers_of_two=powers_of_two, progress=bar)
  assert sizes == expected and bar.n == n
  np.testing.assert_allclose(out["sum"], tree["a"].sum(axis=1) + tree["b"], rtol=1e-6)
  np.testing.assert_array_equal(out["twice"], 2 * tree["a"])


def test_map_chunks_of_nothing_has_the_output_shapes():
  out = chunks.map_chunks(recording([]), {"a": np.zeros((0, 4)), "b": np.zeros(0)}, 8)
  assert out["sum"].shape == (0,) and out["twice"].shape == (0, 4)
  with pytest.raises(ValueError, match="chunk"):
    chunks.map_chunks(jnp.negative, np.zeros(3), 0)
