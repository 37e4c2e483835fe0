"""DPO of the SFT model (configs/sft_tasks.py) on the preference world (`builtin:preferences`):
the policy learns the raters' preferences directly, held near its frozen starting point.

Command:  python -m lm train --config=configs/sft_tasks.py --workdir=runs/sft_tasks  # first
          python -m lm train --config=configs/dpo_tasks.py --workdir=runs/dpo_tasks
          python experiments/preference/plot.py runs/dpo_tasks   # loss, accuracy, margin
          (`configs/dpo_tasks.py:DIR` starts from the model in DIR instead of runs/sft_tasks;
          --config.dpo.loss=ipo|hinge, --config.dpo.beta=0.1, --config.dpo.label_smoothing)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  not measured yet (the SFT run it starts from was not available on this machine)
Result:   not measured yet; what to look at: held-out rewards/accuracies and rewards/margins
          (metrics.jsonl, the plot), and the true reward (lm/data/preferences.py) of greedy
          replies to held-out prompts before and after.
The reference is the starting model, a frozen copy in the train state (+1x parameters, no
optimizer state); log-probs are summed over the reply tokens only.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "dpo"
  config.init_from = arg or "runs/sft_tasks"   # its model and tokenizer; also the reference
  config.model.remat = "dots"
  config.data.source = "builtin:preferences"
  config.dpo.loss = "sigmoid"
  config.dpo.beta = 0.1
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
