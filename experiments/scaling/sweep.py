"""Five model sizes at a fixed number of training tokens (300 steps of 16 x 128 bytes), for a
power law of eval loss in non-embedding parameters: two layers, 16-dimensional heads (MHA),
d_ff = 4 d_model, everything else as experiments/ablations/config.py.

  lm sweep --config=experiments/ablations/config.py --sweep=experiments/scaling/sweep.py \
    --workdir=runs/scaling
"""

from lm.experiments.sweep import sweep

# Kaplan et al. 2020 (L(N) = (N_c / N)^0.076) and the parameter exponent of Hoffmann et al.
# 2022 (approach 3, L = E + A / N^0.34): slopes drawn beside the fit.
REPORT = dict(x="params", fit="power_law", curves_x="tokens", curves_log=True,
              references={"Kaplan 2020 L(N)": 0.076})
WIDTHS = [16, 32, 64, 96, 128]


def get_sweep(arg=None):
  del arg
  return [{"label": f"d{d}", "model.d_model": d, "model.num_heads": d // 16,
           "model.num_kv_heads": d // 16, "model.d_ff": 4 * d} for d in WIDTHS]
