"""Chat generation and option scoring through the engine, for the data commands: batches of
conversations in, replies (or option log-probabilities) out.

Every row's seed is given by the caller (from the prompt's id, the round and the step), so a
rerun of a killed command samples exactly what the first run would have.
"""

from typing import Any, Sequence

import numpy as np

from lm.infer import chat as chat_lib
from lm.infer.sampling import SamplingParams


def prompt_ids(engine: Any, messages: Sequence[dict]) -> list[int]:
  """The conversation's prompt tokens (a final assistant message is a prefix to continue)."""
  return chat_lib.render(engine.tokenizer, messages)


def replies(engine: Any, conversations: Sequence[Sequence[dict]], max_new_tokens: int,
            sampling: SamplingParams, seeds: Sequence[int], batch_size: int = 64,
            stop_strings: Sequence[str] = ()) -> list[str]:
  """The assistant's next reply to each conversation (stripped of surrounding whitespace);
  a prompt too long for the model's context leaves an error naming the limit."""
  prompts = [prompt_ids(engine, c) for c in conversations]
  limit = engine.config.max_seq_len
  for i, prompt in enumerate(prompts):
    if len(prompt) + max_new_tokens > limit:
      raise ValueError(f"a conversation of {len(prompt)} tokens (row {i}) + "
                       f"cai.max_new_tokens={max_new_tokens} exceeds model.max_seq_len="
                       f"{limit}; use fewer few-shot demonstrations (cai.few_shot) or shorter "
                       "replies")
  stops = chat_lib.stop_token_ids(engine.tokenizer)
  out = []
  for begin in range(0, len(prompts), batch_size):
    rows = slice(begin, begin + batch_size)
    completions = engine.generate(prompts[rows], max_new_tokens=max_new_tokens,
                                  sampling=sampling, seed=[int(s) for s in seeds[rows]],
                                  stop_token_ids=stops, stop_strings=list(stop_strings))
    out += [c.text.strip() for c in completions]
  return out


def option_logprobs(engine: Any, conversations: Sequence[Sequence[dict]],
                    options: Sequence[str], batch_size: int = 64) -> np.ndarray:
  """[N, K] log p(option k | conversation n) summed over the option's tokens: the assistant's
  next turn scored as each option (a final assistant message is a prefix it follows)."""
  prompts, continuations = [], []
  option_ids = [[int(t) for t in engine.tokenizer.encode(o)] for o in options]
  for conversation in conversations:
    ids = prompt_ids(engine, conversation)
    for tokens in option_ids:
      prompts.append(ids)
      continuations.append(tokens)
  scores = engine.score(prompts, continuations, batch_size=batch_size)
  sums = np.array([float(np.sum(s)) for s in scores], np.float64)
  return sums.reshape(len(conversations), len(options))
