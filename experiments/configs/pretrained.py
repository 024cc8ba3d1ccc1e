"""The shipped model (qdjax/pretrained/paper): 300k simulated frames.

    python experiments/train.py --config=experiments/configs/pretrained.py \
        --workdir=workdirs/pretrained

Half the study's ~600k frames. The ``base`` ResNet (3 stages, stride 4 at the deepest, so
its receptive field spans the whole blurred streak at D3) over the preset's training D
range, log-uniform per frame.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "base"  # 3-stage ResNet, 32/64/96 channels
  config.batch_size = 32  # frames per step
  config.num_steps = 9375  # 300,000 frames
  config.warmup_steps = 300  # linear warmup
  config.validation_size = 1000  # frames per validation split (val_d1..3)
  config.log_every = 100  # steps between log records
  config.eval_every = 1000  # steps between validations / best-checkpoint updates
  config.checkpoint_every = 1000  # steps between checkpoints
  return config
