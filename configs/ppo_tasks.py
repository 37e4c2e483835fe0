"""PPO of the SFT model (configs/sft_tasks.py) against the reward model of
configs/reward_tasks.py on the preference world (`builtin:preferences`), whose true reward
(lm/data/preferences.py) is logged beside the reward model's but never optimized.

Command:  python -m lm train --config=configs/reward_tasks.py:runs/sft_tasks \\
              --workdir=runs/reward_tasks --config.train.steps=200          # first
          python -m lm train --config=configs/ppo_tasks.py --workdir=runs/ppo_tasks
          python experiments/rl/plot_ppo.py runs/ppo_tasks   # reward, true reward, KL curves
          python experiments/rl/diagnose_ppo.py configs/ppo_tasks.py runs/sft_check --rerank=8
              # can the reward model rank the policy's own replies? (a minute; run it first)
          (`configs/ppo_tasks.py:SFT,RM` starts from other SFT and reward-model workdirs)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  120 steps with six held-out evaluations: 1,660 s wall on 2 cores shared with
          other jobs (noisy).
Result:   from /work/runs/sft_tasks with a 200-step reward model (89.3% held-out pairs):
          held-out (300 prompts) reward-model score 3.641 -> 3.695 greedy (3.580 -> 3.666
          sampled), KL to the SFT model 0.31-0.56 nats per response (target 1.0), and the
          true reward NOT raised: greedy 1.327 -> 1.233, sampled 1.227 -> 1.193 (standard
          error about 0.055). The SFT model loses true reward only on wrong answers (never
          pads, never uses a banned word), and the reward model ranks a correct reply of the
          policy above a wrong one of the same prompt at chance (50.4%): experiments/rl/ppo.md.
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
  config.train.steps = 120
  config.train.batch_size = 32            # prompts, one response each
  config.train.seq_len = 47               # P + N - 1 columns (what tokens/s counts)
  config.train.lr = 3e-5
  config.train.warmup_steps = 5
  config.train.weight_decay = 0.0
  config.train.log_every = 5
  config.train.eval_every = 20
  config.train.checkpoint_every = 20
  config.rl.group_size = 1
  config.rl.max_prompt_len = 24           # the longest rendered prompt is 23 tokens
  config.rl.max_new_tokens = 24
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
