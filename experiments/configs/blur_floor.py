"""The blur floor's detector: trained and validated on noise-free expected images.

    python experiments/train.py --config=experiments/configs/blur_floor.py \
        --workdir=workdirs/blur_floor

With no shot noise, what is left between a frame and its trajectory centroid is the motion
blur of the raster scan, so this detector's AUC at a D bounds what any detector can reach
there (docs/reproduction.md). The detector normalises each frame by its median and mean
absolute deviation, which removes N and B from a noise-free image exactly, so one model
serves every photon level. The D range spans the reproduction map's (0.1 to 20 um^2/s).

This is the CPU size (``small``, 64k frames: 1500 steps took 61 minutes on two heavily
shared cores, so about 20 minutes on idle ones). On a GPU, the shipped model's size:
``--config.model.name=base --config.num_steps=9375 --config.warmup_steps=300`` (300k
frames).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data = "noise_free"  # simulated on the device; the expected image is the input
  config.diffusion = "0.05:25"  # log-uniform D, um^2/s: the map's range with a margin
  config.model.name = "small"  # the default detector
  config.batch_size = 32  # frames per step
  config.num_steps = 2000  # 64,000 frames
  config.warmup_steps = 100  # linear warmup
  config.validation_size = 400  # frames per validation split (val_d1..3, noise-free)
  config.log_every = 100  # steps between log records
  config.eval_every = 500  # steps between validations / best-checkpoint updates
  config.checkpoint_every = 500  # steps between checkpoints
  return config
