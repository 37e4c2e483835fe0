"""A Bradley-Terry reward model on the preference world (`builtin:preferences`), scored on
held-out pairs against the world's true preferences.

Command:  python -m lm train --config=configs/reward_tasks.py --workdir=runs/reward_tasks
          python experiments/preference/plot.py runs/reward_tasks   # loss, accuracy, margin
          (`configs/reward_tasks.py:DIR` starts the decoder from the model in DIR, e.g. an
          SFT run of configs/sft_tasks.py; the head always starts fresh)
          label noise: --config.data.source=builtin:preferences:noise=0.2
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  RUNTIME
Result:   RESULT
The pairs: for each built-in task prompt, a correct reply against a wrong one, the bare
answer against a padded one, or a correct reply with a banned word against a clean wrong one
(lm/data/preferences.py). Held-out pairs have held-out prompts and no label noise.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "reward"
  if arg:
    config.init_from = arg
  else:
    config.model.preset = "tiny"
    config.model.d_model = 128
    config.model.num_layers = 3
  config.data.source = "builtin:preferences"
  config.train.steps = 600
  config.train.batch_size = 32            # pairs (64 rows)
  config.train.seq_len = 64               # the longest rendered pair side is 63 bytes
  config.train.lr = 2e-3
  config.train.warmup_steps = 30
  config.train.log_every = 10
  config.train.eval_every = 100
  config.data.eval_documents = 0          # every held-out pair (300)
  config.train.checkpoint_every = 200
  return config_lib.lock(config)
