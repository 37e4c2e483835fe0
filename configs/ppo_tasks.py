"""PPO of the SFT model (configs/sft_tasks.py) against the reward model of
configs/reward_tasks.py on the preference world (`builtin:preferences`), whose true reward
(lm/data/preferences.py) is logged beside the reward model's but never optimized.

Command:  python -m lm train --config=configs/reward_tasks.py:runs/sft_tasks \\
              --workdir=runs/reward_tasks                                   # first
          python -m lm train --config=configs/ppo_tasks.py --workdir=runs/ppo_tasks
          python experiments/rl/plot_ppo.py runs/ppo_tasks   # reward, true reward, KL curves
          (`configs/ppo_tasks.py:SFT,RM` starts from other SFT and reward-model workdirs)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  150 steps: 1,366 s wall (214 CPU-seconds) on 2 cores shared with about ten jobs.
Result:   held-out (300 prompts) reward-model score 4.683 -> 4.813, true reward 1.227 -> 1.133
          (not raised), KL to the SFT model 0.68 nats per response (target 1.0); controls
          and curves in experiments/rl/ppo.md.
Each step samples one response of at most 24 tokens to each of 32 prompts from the policy in
the train state, scores it with the reward model, subtracts 0.1 x the per-token KL to the SFT
model (adapted towards 1 nat per response), and takes 4 epochs of 2 minibatches of PPO
updates; the value model starts from the reward model (as TRL's PPO does).
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  sft, reward_model = (arg or "runs/sft_tasks,runs/reward_tasks").split(",")
  config = config_lib.base_config()
  config.stage = "ppo"
  config.init_from = sft                  # the policy, the reference and its tokenizer
  config.model.remat = "none"
  config.data.source = "builtin:preferences"   # its prompts (the pairs are not read)
  config.data.eval_documents = 0          # every held-out prompt (300)
  config.train.steps = 150
  config.train.batch_size = 32            # prompts, one response each
  config.train.seq_len = 47               # P + N - 1 columns (what tokens/s counts)
  config.train.lr = 3e-5
  config.train.warmup_steps = 5
  config.train.weight_decay = 0.0
  config.train.log_every = 5
  config.train.eval_every = 25
  config.train.checkpoint_every = 25
  config.rl.group_size = 1
  config.rl.max_prompt_len = 24           # the longest rendered prompt is 23 tokens
  config.rl.max_new_tokens = 24
  config.rl.reward = "model,true"
  config.rl.reward_weights = "1.0,0.0"    # the true reward: logged, never optimized
  config.rl.reward_model = reward_model
  config.rl.samples_every = 25
  config.ppo.value_init = reward_model
  config.ppo.kl_coef = 0.1
  config.ppo.kl_target = 1.0              # nats per response
  config.ppo.kl_horizon = 1000            # rollouts: the coefficient moves <= 0.64% a step
  config.ppo.epochs = 4
  config.ppo.num_minibatches = 2
  return config_lib.lock(config)
