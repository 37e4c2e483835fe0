"""A reward for tests of the RL stages (`rl.reward="tests.stages.rl_rewards:letters"`): dense
enough that a random tiny model's completions differ in it, so every step has a gradient."""


def letters(prompts, completions, records):
  del prompts, records
  return [sum(ch.isalpha() for ch in c) / max(len(c), 1) for c in completions]
