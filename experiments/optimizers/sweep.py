"""AdamW against Adafactor over a learning-rate grid, on the ablation base model
(experiments/ablations/config.py) trained for 200 steps, one seed per point.

  lm sweep --config=experiments/ablations/config.py --config.train.steps=200 \
    --sweep=experiments/optimizers/sweep.py --workdir=runs/optimizers

Adafactor's step is relative to each parameter's RMS (lm/train/optim.py), about 0.02 at
initialisation here, so its learning rates sit about 50x above AdamW's: its grid goes on to
1.0 (added after the first 12 runs showed no minimum up to 0.1).
"""

from lm.experiments.sweep import product, sweep

REPORT = dict(x="train.lr", hue="train.optimizer")
LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def get_sweep(arg=None):
  del arg
  return (product(sweep("train.optimizer", ["adamw", "adafactor"]), sweep("train.lr", LRS))
          + product(sweep("train.optimizer", ["adafactor"]), sweep("train.lr", [0.3, 1.0])))
