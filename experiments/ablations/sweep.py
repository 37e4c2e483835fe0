"""Architecture ablations at a fixed number of training tokens: one change from the base each
(experiments/ablations/config.py), three seeds per variant.

  lm sweep --config=experiments/ablations/config.py --sweep=experiments/ablations/sweep.py \
    --workdir=runs/ablations
"""

from lm.experiments.sweep import product, sweep

REPORT = dict(baseline="base")

# The base: RoPE, SwiGLU, GQA with 2 KV heads of 4, untied embeddings, no z-loss.
VARIANTS = [
    {"label": "base"},
    {"label": "learned-positions", "model.positions": "learned"},
    # GELU with 1.5x the hidden width: 2 * 64 * 384 = 3 * 64 * 256 MLP weights per layer.
    {"label": "gelu-param-matched", "model.mlp": "gelu", "model.d_ff": 384},
    {"label": "mha-kv4", "model.num_kv_heads": 4},
    {"label": "mqa-kv1", "model.num_kv_heads": 1},
    {"label": "tied-embeddings", "model.tie_embeddings": True},
    {"label": "z-loss-1e-4", "train.z_loss": 1e-4},
]


def get_sweep(arg=None):
  """`sweep.py:2` (or `:0,1`): those seeds only; `sweep.py:1:reversed`: in reverse order.
  For sweep processes side by side on one workdir (each skips the runs another trains)."""
  seeds, _, order = (arg or "0,1,2").partition(":")
  runs = product(sweep("seed", [int(s) for s in seeds.split(",")]), VARIANTS)
  return runs[::-1] if order == "reversed" else runs  # else every variant's seed 0 first
