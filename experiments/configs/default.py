"""Default training config: a few minutes on a 2-core CPU.

    python experiments/train.py --workdir=workdirs/default   # the preset's training D range
    python experiments/train.py --diffusion=4.04 --config.num_steps=30 --workdir=/tmp/x

Every field can be overridden with ``--config.<name>=value``.
"""

from ml_collections import config_dict

from qdjax.sim import presets


def get_config():
  config = config_dict.ConfigDict()
  config.preset = "paper"  # simulation preset: a name or a JSON preset file (qdjax.sim.presets)
  config.diffusion = config_dict.placeholder(str)  # D um^2/s, or lo:hi; None: preset's range
  config.seed = 0  # key(seed) -> init key, data key
  config.init_from = ""  # warm start: a shipped model, export or workdir (""/None: random)
  config.data = "simulate"  # qdjax.sources: simulate, noise_free, prior (device) or tfds
  config.tfds_data_dir = config_dict.placeholder(str)  # data=tfds: TFDS data directory
  config.tfds_name = "qd2pm/paper"  # data=tfds: dataset name/config
  config.tfds_split = "train"  # data=tfds: split to train on

  # Simulation values that replace the preset's (None: keep), e.g. a microscope's own N and
  # B; used for training and validation frames alike.
  config.overrides = presets.overrides_config()  # spec-named values; None keeps the preset's

  config.model = config_dict.ConfigDict()
  config.model.name = "s4_light"  # preset in qdjax.detect.model.PRESETS (see its docstring)
  config.model.stage_sizes = config_dict.placeholder(tuple)  # blocks per stage (None: preset)
  config.model.stage_features = config_dict.placeholder(tuple)  # channels per stage
  config.model.stage_strides = config_dict.placeholder(tuple)  # stride per stage (1 or 2)
  config.model.stem_features = config_dict.placeholder(int)  # stem channels
  config.model.stem_kernel = config_dict.placeholder(int)  # stem kernel size
  config.model.head_features = config_dict.placeholder(int)  # FPN/head channels
  config.model.norm = config_dict.placeholder(str)  # 'batch' or 'none'

  config.loss = config_dict.ConfigDict()
  config.loss.offset_radius = 1  # offsets trained within this many px of a keypoint's pixel
  config.loss.offset_weight = 1.0  # weight of the L1 offset loss vs the presence BCE
  config.loss.uncertainty_weight = 1.0  # weight of the offset-uncertainty (sigma) NLL

  config.decode = config_dict.ConfigDict()
  config.decode.area_per_detection = 256.0  # cap: one detection per this many px^2 ...
  config.decode.min_detections = 4  # ... and at least this many per frame
  config.decode.nms_window = 3  # peaks are maxima in this window, px
  config.decode.score_window = 3  # score = presence probability summed in this window, px
  config.decode.score_radius = 1.0  # score *= P(offset error < this, px) from sigma (0: off)
  config.decode.refine_window = 3  # position = presence-weighted mean of votes here (1: off)

  config.batch_size = 32  # global batch, frames per step (divisible by the device count)
  config.num_steps = 2000  # SGD steps; frames seen = num_steps * batch_size
  config.learning_rate = 0.01  # peak SGD learning rate (0.02 was worse, 0.05 did not train)
  config.momentum = 0.9  # SGD (Nesterov) momentum
  config.schedule = "cosine"  # 'cosine' or 'constant' after the warmup
  config.warmup_steps = 100  # linear warmup from peak/warmup_steps to the peak
  config.final_lr_fraction = 0.0  # cosine ends at this fraction of the peak
  config.weight_decay = 0.0  # decoupled L2 (0: off)
  config.grad_clip_norm = 0.0  # clip gradients to this global norm (0: off)

  config.validation_splits = "val_d1,val_d2,val_d3"  # qdjax.sim.data splits, comma-separated
  config.validation_size = 600  # frames per validation split
  config.validation_seed = 0  # validation frames use data.split_seed(this, split)
  config.log_every = 50  # steps between metrics.jsonl records
  config.eval_every = 500  # steps between validations (and best-checkpoint updates)
  config.checkpoint_every = 500  # steps between Orbax checkpoints
  config.keep_checkpoints = 2  # checkpoints kept (the best is kept separately)
  config.progress = True  # tqdm progress bar
  return config
