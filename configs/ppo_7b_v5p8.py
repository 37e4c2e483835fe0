"""PPO of a 7B model (Llama-2-7B shapes) against a 7B reward model on a TPU v5p-8 (4 chips,
95 GiB HBM each): the memory plan of issue 16, from `lm plan`.

Command:  lm plan --config=configs/ppo_7b_v5p8.py --accelerator=v5p-8
          lm train --config=configs/ppo_7b_v5p8.py:SFT_WORKDIR,RM_WORKDIR --workdir=...
Hardware: TPU v5p-8 (4 chips). Not run: planned only (no accelerator here).
Plan:     57.8 of 95 GiB per chip (README.md, "RL memory plans", has lm plan's table).
          Sharded over the 4 chips (fsdp=4): the policy with a value head on its trunk
          (ppo.value_model="shared"; a separate 7B value model would add its parameters,
          gradients and AdamW state, 25 GiB more per chip), the frozen reference, gradients
          and AdamW state: 31.4 GiB per chip. The reward model (lm.RewardModel) is held whole
          on every chip: 25.1 GiB, the largest single item. 16 prompts a step (4 per chip),
          responses of up to 256 tokens after 256-token prompts, 4 epochs of 2 minibatches.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "ppo"
  if arg:
    config.init_from, config.rl.reward_model = arg.split(",")
  else:
    config.model.preset = "llama2-7b"
    config.data.tokenizer = "byte"        # the plan needs shapes only
  config.model.dtype = "bfloat16"
  config.model.remat = "full"
  config.mesh.data, config.mesh.fsdp = 1, 4
  config.data.source = "builtin:preferences"
  config.train.batch_size = 16            # prompts, one response each
  config.train.lr = 1e-6
  config.train.warmup_steps = 5
  config.rl.group_size = 1
  config.rl.max_prompt_len = 256
  config.rl.max_new_tokens = 256
  config.rl.reward = "model"
  config.ppo.value_model = "shared"
  config.ppo.num_minibatches = 2
  return config_lib.lock(config)
