"""A Bradley-Terry reward model on the preference world (`builtin:preferences`), started from
the SFT model of configs/sft_tasks.py, scored on held-out pairs against the world's true
preferences.

Command:  python -m lm train --config=configs/reward_tasks.py --workdir=runs/reward_tasks
          python experiments/preference/reward_accuracy.py runs/reward_tasks  # per kind, task
          python experiments/preference/plot.py runs/reward_tasks   # loss, accuracy, margin
          (`configs/reward_tasks.py:DIR` starts the decoder from the model in DIR instead of
          runs/sft_tasks, `:scratch` trains a 0.57M model from nothing; the head always
          starts fresh; label noise: --config.data.source=builtin:preferences:noise=0.2)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  600 steps of 32 pairs (64 rows) x 64 tokens on the 1.70M SFT model: about 5
          CPU-minutes; measured 211 steps in 20 minutes wall (1.6 CPU-minutes) on 2 cores
          shared with a dozen other jobs (load average 27-32), stopped there for time.
Result:   measured from /work/runs/sft_tasks (configs/sft_tasks.py: 66.3% held-out exact
          match), held-out accuracy on all 300 pairs 89.7% at step 100, 89.3% at step 200
          (margin 9.79, reward mean -4.08 / std 7.42); the checkpoint at step 211
          (reward_accuracy.py): 87.3%, banned 100%, concise 100%, correct vs wrong 61.2%
          (sort 79, add 67, units 62, count 57, reverse 50, lookup 44%). The goal of 90% is
          NOT reached; it was, just (90.0%), before a wrong number below 10 became as often
          below the answer as above: that shortcut ("smaller wins") was worth count 93%.
          Why the first version missed 90% (81.0% from scratch, 85.7% from a 0.57M SFT model;
          correct vs wrong 46-62%): in its correct-vs-wrong pairs a bare wrong reply faced a
          correct one padded half the time, so "shorter wins" explained most preferences and
          a model learnt length instead of correctness. Evidence, all from the same SFT model:
          trained on those pairs (121 steps): 74.3% on their held-out pairs, correct vs wrong
          26% (it prefers the shorter reply); on the minimal pairs of lm/data/preferences.py
          (step 200; an earlier version of them: banned word after a space, wrong numbers
          below 10 always above the answer): 90.0%
          (89.0% at step 300; lr 5e-4: 89.7% at step 100), banned 100%, concise 98.9%,
          correct vs wrong 70.4% (count 93, sort 89, units 81, lookup 67, add 56, reverse
          45%). The SFT model's own likelihood prefers the correct reply in 88.8% of those pairs
          and 84.7% of the current ones (experiments/preference/likelihood_accuracy.py;
          reverse 100%), so the head, read at the end-of-turn token, uses only part of what
          the decoder knows.
          From scratch a model cannot know whether an answer is right (first version: 46%).
          Caveat: minimal pairs never trade one rule against another, so the reward's scale
          across rules is not learnt: on the first version's pairs this model scores a padded
          correct reply below a bare wrong one (correct vs wrong 31% there, 75.7% overall).
The pairs: for each built-in task prompt, a correct reply against a wrong one of the same
form, the bare answer against a padded one, or a correct reply against the same with a banned
word (lm/data/preferences.py). Held-out pairs have held-out prompts and no label noise.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "reward"
  if arg == "scratch":
    config.model.preset = "tiny"
    config.model.d_model = 128
    config.model.num_layers = 3
  else:  # the decoder from an SFT model: whether an answer is right is what it knows
    config.init_from = arg or "runs/sft_tasks"
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
