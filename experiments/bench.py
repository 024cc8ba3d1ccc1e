r"""Throughput benchmarks; prints and writes JSON.

  python experiments/bench.py --what=simulate --output=bench_simulate.json
  python experiments/bench.py --what=train
  python experiments/bench.py --what=locate   # fast model, full-accuracy model, trackpy
  python experiments/bench.py --what=startup  # one locate.py call: imports, compilation
  python experiments/bench.py --what=compile  # XLA CPU settings: compile, run time, values
  python experiments/bench.py --what=diffusion   # per-track D accuracy of whole pipelines
  python experiments/bench.py --what=diffusion --quick --photon_scale=0.25   # dimmer QDs
  python experiments/bench.py --what=blind   # track.py's defaults on another simulator's movies
  python experiments/bench.py --what=populations   # mixed motion: populations, motion types
  python experiments/bench.py --what=fit   # microscope-fit recovery errors, not a time
  python experiments/bench.py --what=tradeoff --train_frames=131072 --models=base,s2
  python experiments/bench.py --what=batch   # many movies: 1 Dask worker against 2
  python experiments/bench.py --what=motion   # D under tissue motion, corrected or not
  python experiments/bench.py --what=motion --models=general --workdir=workdirs/x  # a model
  python experiments/bench.py --what=motion --breathing_z=0   # breathing in the plane only
  python experiments/bench.py --what=texture   # false detections on textured, moving tissue
  python experiments/bench.py --what=texture --models=general --workdir=workdirs/x

Timings are medians of repeats; ratios are measured side by side in the same run.
"""

import importlib
import json

from absl import flags

from qdjax import cli, io

_WHAT = flags.DEFINE_enum(
  "what",
  "simulate",
  [
    "simulate",
    "train",
    "locate",
    "startup",
    "compile",
    "diffusion",
    "blind",
    "populations",
    "fit",
    "tradeoff",
    "batch",
    "motion",
    "texture",
  ],
  "What to measure.",
)
_OUTPUT = flags.DEFINE_string("output", None, "JSON output path (default: bench_<what>.json).")
_REPEATS = flags.DEFINE_integer(
  "repeats", 5, "Timed repeats per measurement (median).", lower_bound=1
)
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes, for a smoke test.")
_TRAIN_FRAMES = flags.DEFINE_integer(
  "train_frames", None, "tradeoff: training frames per model (equal budget).", lower_bound=1
)
_MODELS = flags.DEFINE_list(
  "models", None, "tradeoff: model presets to train and compare; startup, texture: shipped models."
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "tradeoff: where the training runs go; motion, texture: a trained model to use."
)
_BREATHING_Z = flags.DEFINE_float(
  "breathing_z",
  0.5,
  "motion: the breathing's z amplitude as a fraction of its y amplitude (0: in the plane).",
)
_PHOTON_SCALE = flags.DEFINE_float(
  "photon_scale", 1.0, "diffusion: QDs' peak photons times this (< 1: dimmer than in vivo)."
)


def main(argv):
  cli.check_no_extra_args(argv)
  output = _OUTPUT.value or f"bench_{_WHAT.value}.json"
  io.check_output_path(output)
  module = importlib.import_module(f"benchmarks.{_WHAT.value}")
  options = {}
  if _WHAT.value in ("train", "compile"):  # at the default training config, or the tiny one
    from configs import default, tiny

    options["config"] = (tiny if _QUICK.value else default).get_config()
  if _WHAT.value == "tradeoff":  # each model trained with the shipped paper model's recipe
    from configs import pretrained, tiny

    options["config"] = (tiny if _QUICK.value else pretrained).get_config()
    options.update(train_frames=_TRAIN_FRAMES.value, workdir=_WORKDIR.value)
    options["models"] = tuple(_MODELS.value) if _MODELS.value else None
  if _WHAT.value == "diffusion":
    options["photon_scale"] = _PHOTON_SCALE.value
  if _WHAT.value == "motion":
    options["model"] = _MODELS.value[0] if _MODELS.value else None
    options["workdir"] = _WORKDIR.value
    options["breathing_z"] = _BREATHING_Z.value
  if _WHAT.value == "texture":
    options["models"] = tuple(_MODELS.value) if _MODELS.value else None
    options["workdir"] = _WORKDIR.value
  if _WHAT.value == "startup" and _MODELS.value:
    options["models"] = tuple(_MODELS.value)
  result = module.run(repeats=_REPEATS.value, quick=_QUICK.value, **options)
  text = json.dumps(result, indent=2)
  print(text)
  io.write_text(output, text + "\n")
  print(f"wrote {output}")


if __name__ == "__main__":
  cli.run(main)
