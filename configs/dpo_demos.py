"""DPO of an SFT model with bad habits (configs/sft_demos.py: its replies pad and say banned
words, as its demonstrations did) on the preference world (`builtin:preferences`), whose
raters prefer correct, concise replies without banned words.

Command:  lm train --config=configs/sft_demos.py --workdir=runs/sft_demos        # first
          lm train --config=configs/dpo_demos.py --workdir=runs/dpo_demos
          python experiments/preference/evaluate.py runs/dpo_demos runs/sft_demos  # true reward
          python experiments/preference/plot.py runs/dpo_demos   # loss, accuracy, margin
          (`configs/dpo_demos.py:DIR` starts from the model in DIR instead of runs/sft_demos)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  150 steps of 32 pairs (64 rows, policy and reference) x 64 tokens: 1.6 minutes wall
          (93-98 s per seed, 2026-11-30, 2 cores shared with one other job); evaluate.py 10 s.
Result:   from runs/sft_demos (greedy true reward 0.653, answer right 67.7%, exact match 0%:
          every reply padded), greedy replies to the 300 held-out prompts:
            seed (--config.seed)    0        1        2
            true reward           1.400    1.367    1.393
            exact match           70.0%    68.3%    69.7%
            KL(DPO || SFT)        1.10     1.11     1.09    nats per reply
            rewards/accuracies    91.7%    92.7%    92.0%   held-out pairs, step 150
          (seed 0 at steps 50 / 100: 88.3 / 91.3%; experiments/preference/dpo_demos.png and
          dpo_demos_eval.json). Every greedy reply stops after the answer; the share of right
          answers barely moves (67.7 -> 68.3-70.0%): the gain is the habits unlearnt, not
          correctness. DPO alone (--config.dpo.rpo_alpha=0, 3.2 min) also drops the padding
          but drifts far and damages lists: 1.106, exact match 55.3% (reverse 100 -> 78%),
          KL 5.73, rewards/accuracies 93.3%.
Settings as configs/dpo_tasks.py (sigmoid, beta 0.1, the chosen reply's NLL with weight 1,
lr 1e-4, 150 steps of 32 pairs); the reference is the frozen SFT model.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "dpo"
  config.init_from = arg or "runs/sft_demos"   # its model and tokenizer; also the reference
  config.model.remat = "dots"
  config.data.source = "builtin:preferences"
  config.dpo.loss = "sigmoid"
  config.dpo.beta = 0.1
  config.dpo.rpo_alpha = 1.0
  config.train.steps = 150
  config.train.batch_size = 32            # pairs (64 rows per forward pass, twice: the
  config.train.seq_len = 64               # policy and the reference)
  config.train.lr = 1e-4
  config.train.warmup_steps = 20
  config.train.weight_decay = 0.0
  config.train.log_every = 10
  config.train.eval_every = 50
  config.train.checkpoint_every = 50
  config.data.eval_documents = 0          # every held-out pair (300)
  return config_lib.lock(config)
