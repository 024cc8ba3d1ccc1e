"""The fast paper model (qdjax/pretrained/paper_fast): ``s4_light`` on 1M simulated frames.

    python experiments/train.py --config=experiments/configs/paper_fast.py \
        --workdir=workdirs/paper_fast

The shipped ``paper`` recipe (the preset's training D range, log-uniform per frame, the
same validation splits and selection) with the ``s4_light`` network, which is ~35x
cheaper per frame, so it sees more frames: 1M in a few minutes of a 2-core CPU.
"""

from configs import pretrained


def get_config():
  config = pretrained.get_config()
  config.model.name = "s4_light"  # space-to-depth 4 stem, mean normalisation (qdjax.detect.model)
  config.batch_size = 64  # frames per step
  config.num_steps = 15625  # 1,000,000 frames
  config.eval_every = 2500  # steps between validations / best-checkpoint updates
  config.checkpoint_every = 2500  # steps between checkpoints
  return config
