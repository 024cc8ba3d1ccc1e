r"""Draws the README's pictures: simulated frames of the three regimes, truth marked; or,
with --populations or --motion, that benchmark's figure from its JSON.

python experiments/figures.py                            # writes ./regimes.png
python experiments/figures.py --output=docs/regimes.png  # replaces the README's figure
python experiments/figures.py --populations=results/bench_populations.json \
    --output=docs/populations.png
python experiments/figures.py --motion=results/bench_motion.json --output=docs/motion.png
"""

import json

from absl import flags

from qdjax import cli, io, plotting
from qdjax.sim import data, presets

_PRESET = flags.DEFINE_string("preset", "paper", "Named parameter set.")
_PER_REGIME = flags.DEFINE_integer("per_regime", 5, "Frames per regime.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the drawn frames.")
_POPULATIONS = flags.DEFINE_string(
  "populations", None, "Draw this bench --what=populations JSON instead of the regimes."
)
_MOTION = flags.DEFINE_string(
  "motion", None, "Draw this bench --what=motion JSON instead of the regimes."
)
_OUTPUT = flags.DEFINE_string(
  "output", "regimes.png", "PNG path (the README's figure is docs/regimes.png)."
)


def main(argv):
  cli.check_no_extra_args(argv)
  io.check_output_path(_OUTPUT.value)
  for what, path, draw in (
    ("populations", _POPULATIONS.value, plotting.populations_figure),
    ("motion", _MOTION.value, plotting.motion_figure),
  ):
    if path is None:
      continue
    with open(path) as f:
      record = json.load(f)
    if record.get("what") != what:
      raise ValueError(f"{path} is not a bench --what={what} result")
    draw(record, _OUTPUT.value)
    print(f"wrote {_OUTPUT.value}")
    return
  preset = presets.get(_PRESET.value)
  images, keypoints, titles = [], [], []
  for regime, d in enumerate(preset.regimes, start=1):
    # The same seed gives the same start positions, so columns differ only by D.
    frames = data.generate(preset.sim_params(regime=regime), _PER_REGIME.value, _SEED.value)
    for kind in ("expected", "images"):
      images.extend(frames[kind])
      keypoints.extend(frames["keypoints"])
      label = "expected" if kind == "expected" else "counts"
      titles.extend([f"D{regime}={d:.3g} {label}"] * _PER_REGIME.value)
  plotting.contact_sheet(
    images, _OUTPUT.value, keypoints=keypoints, titles=titles, columns=_PER_REGIME.value
  )
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main)
