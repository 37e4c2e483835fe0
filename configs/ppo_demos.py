"""PPO of an SFT model with bad habits (configs/sft_demos.py: its replies pad and say banned
words, as its demonstrations did) against the reward model of configs/reward_tasks.py on the
preference world (`builtin:preferences`), whose true reward (lm/data/preferences.py) is
logged beside the reward model's but never optimized.

Command:  lm train --config=configs/sft_demos.py --workdir=runs/sft_demos        # first
          lm train --config=configs/reward_tasks.py --workdir=runs/reward_tasks \\
              --config.train.steps=300                                        # and
          lm train --config=configs/ppo_demos.py --workdir=runs/ppo_demos
          python experiments/rl/plot_ppo.py runs/ppo_demos   # reward, true reward, KL curves
          (`configs/ppo_demos.py:SFT,RM` starts from other SFT and reward-model workdirs)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  120 steps with six held-out evaluations: 6.1 minutes wall (368 s; seed 1: 338 s;
          2026-11-30, 2 cores shared with one other job: noisy).
Result:   from runs/sft_demos (greedy true reward 0.653: every reply padded; sampled 0.239,
          27% with a banned word) and a 300-step reward model (86.3% on held-out pairs),
          on all 300 held-out prompts at step 120: true reward greedy 0.653 -> 1.340
          (--config.seed=1: 1.407), sampled 0.239 -> 1.180 (1.187), reward-model score
          sampled -3.82 -> 3.46, KL to the SFT model 0.82-1.005 nats per response at the six
          evaluations (target 1.0). The habits go (no extra or banned word in a greedy reply);
          right answers stay where they were (greedy 67.7 -> 67.0%, seed 1 70.3%).
          experiments/rl/ppo.md section 0, experiments/rl/ppo_demos.png. A KL coefficient
          starting at 0.1 (as configs/ppo_tasks.py) overshoots the target (1.3-2.5) and
          exploits the reward model: greedy 1.12 at step 120.
Settings as configs/ppo_tasks.py but for the start, room for longer replies (40 tokens) and
the KL coefficient's start (3.0, adapted towards 1 nat per response).
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  sft, reward_model = (arg or "runs/sft_demos,runs/reward_tasks").split(",")
  config = config_lib.base_config()
  config.stage = "ppo"
  config.init_from = sft                  # the policy, the reference and its tokenizer
  config.model.remat = "none"
  config.data.source = "builtin:preferences"   # its prompts (the pairs are not read)
  config.data.eval_documents = 0          # every held-out prompt (300)
  config.train.steps = 120
  config.train.batch_size = 32            # prompts, one response each
  config.train.seq_len = 63               # P + N - 1 columns (what tokens/s counts)
  config.train.lr = 3e-5
  config.train.warmup_steps = 5
  config.train.weight_decay = 0.0
  config.train.log_every = 5
  config.train.eval_every = 20
  config.train.checkpoint_every = 20
  config.rl.group_size = 1
  config.rl.max_prompt_len = 24           # the longest rendered prompt is 23 tokens
  config.rl.max_new_tokens = 40           # the longest answer, a pleasantry, a banned word
  config.rl.reward = "model,true"
  config.rl.reward_weights = "1.0,0.0"    # the true reward: logged, never optimized
  config.rl.reward_model = reward_model
  config.rl.samples_every = 20
  config.ppo.value_init = reward_model
  config.ppo.kl_coef = 3.0               # the reward model's scores span ~15: a strong start
  config.ppo.kl_target = 1.0              # nats per response
  config.ppo.kl_horizon = 1000            # rollouts: the coefficient moves <= 0.64% a step
  config.ppo.epochs = 4
  config.ppo.num_minibatches = 2
  return config_lib.lock(config)
