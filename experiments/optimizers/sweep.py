"""AdamW against Adafactor over a learning-rate grid, on the ablation base model
(experiments/ablations/config.py) trained for 200 steps, one seed per point.

  lm sweep --config=experiments/ablations/config.py --config.train.steps=200 \
    --sweep=experiments/optimizers/sweep.py --workdir=runs/optimizers
"""

from lm.experiments.sweep import product, sweep

REPORT = dict(x="train.lr", hue="train.optimizer")
LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def get_sweep(arg=None):
  del arg
  return product(sweep("train.optimizer", ["adamw", "adafactor"]), sweep("train.lr", LRS))
