r"""Localise quantum dots in your own frames; writes CSV ``frame,x,y,score``.

  python experiments/locate.py --method=model --input=stack.tif --output=locs.csv --plot

--input: .npy, .npz (array ``images``) or .tif/.tiff; one frame (h, w) or a stack
(n, h, w), any frame size. Coordinates: the centre of pixel (row 0, column 0) is (0, 0),
x = column, y = row (trackpy's convention). The model is fully convolutional, so frames of
any size are processed as they are, without padding or cropping. Large stacks stream in
chunks of --chunk frames: memory is bounded by one chunk.
"""

from absl import flags

from qdjax import cli
from qdjax.detect import shipped
from qdjax.localize import files as locate_lib
from qdjax.localize import locator
from qdjax.sim import presets

_METHOD = flags.DEFINE_enum("method", "model", list(locator.METHODS), "Localisation method.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Training workdir of a model; default: a model shipped with qdjax (--model)."
)
_MODEL = flags.DEFINE_enum("model", None, list(shipped.MODELS), locator.MODEL_HELP)
_INPUT = flags.DEFINE_string("input", None, "Frames: .npy, .npz or .tif.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "CSV to write.", required=True)
_MIN_SCORE = flags.DEFINE_float(
  "min_score",
  None,
  "Drop detections scoring below this (-inf keeps all). Default per method: "
  + ", ".join(f"{m} {s:g}" for m, s in locate_lib.DEFAULT_MIN_SCORE.items())
  + ". Scores: model ~ probability that a QD is within 1 px; trackpy the feature's mass; "
  "mle the log-likelihood ratio against a flat background (see the README).",
)
_CHUNK = flags.DEFINE_integer("chunk", 4096, "Frames per chunk (bounds memory).", lower_bound=1)
_LAYOUT = flags.DEFINE_enum(
  "layout",
  "auto",
  ["auto", "stack", "channels"],
  "How to read a 3-D array whose last axis is 3 or 4, such as (64, 64, 3): an RGB(A) image "
  "or frames a few px wide? channels: one image, each channel a frame; stack: frames as "
  "stored; auto: refuse such a shape.",
)
_PLOT = flags.DEFINE_bool("plot", False, "Also draw detections on the first frames (<output>.png).")


def main(argv):
  cli.check_no_extra_args(argv)
  output = _OUTPUT.value
  plot = (output.rsplit(".", 1)[0] + ".png") if _PLOT.value else None
  min_score = _MIN_SCORE.value
  if min_score is None:
    min_score = locate_lib.DEFAULT_MIN_SCORE[_METHOD.value]
  locate_lib.check_arguments(_INPUT.value, output, min_score, plot)
  locate = locator.make(
    _METHOD.value, workdir=_WORKDIR.value, model=_MODEL.value, preset=presets.get("paper")
  )
  n = locate_lib.locate_file(
    _INPUT.value,
    output,
    locate,
    chunk=_CHUNK.value,
    min_score=min_score,
    plot_path=plot,
    layout=_LAYOUT.value,
  )
  print(f"located {n} frames -> {output}" + (f" (+ {plot})" if plot else ""))


if __name__ == "__main__":
  cli.run(main)
