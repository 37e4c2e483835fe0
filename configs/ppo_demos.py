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
Runtime:  RUNTIME
Result:   RESULT
Settings as configs/ppo_tasks.py but for the start and room for longer replies (40 tokens).
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
  config.ppo.kl_coef = 0.1
  config.ppo.kl_target = 1.0              # nats per response
  config.ppo.kl_horizon = 1000            # rollouts: the coefficient moves <= 0.64% a step
  config.ppo.epochs = 4
  config.ppo.num_minibatches = 2
  return config_lib.lock(config)
