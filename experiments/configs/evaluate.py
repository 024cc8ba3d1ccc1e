"""Settings of experiments/evaluate.py: which methods, on which test sets, written where.

The frequent knobs are also plain flags (--methods, --scale, --workdir, --model,
--output_dir).
"""

from ml_collections import config_dict


def get_config():
  config = config_dict.ConfigDict()
  config.preset = "paper"  # preset name or JSON preset file (qdjax.sim.presets)
  config.seed = 0  # user seed; test_dk frames come from data.split_seed(seed, 'test_dk')
  config.scale = 1.0  # test-set size factor; 1 = the study's 2570 / 2410 / 1870 frames
  config.methods = "trackpy,mle,model"  # comma-separated, any of trackpy, mle, model
  config.workdir = config_dict.placeholder(str)  # model training dir; None = a shipped model
  config.model = config_dict.placeholder(str)  # shipped model (inference.MODELS); None = default
  config.output_dir = "out/evaluate"  # table.md, table.json and pr_curves.png go here
  config.trackpy_settings = "auto"  # auto (calibrated if any, else tune), preset or tune
  config.trackpy_workers = config_dict.placeholder(int)  # trackpy processes; None = by cores
  config.mle_score = "llr"  # MLE score: llr (likelihood ratio) or snr (amplitude / SE)
  return config
