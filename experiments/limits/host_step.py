"""The host-step cost of constrained decoding: per-token time of free decoding (the jitted
while loop) against decoding under a tool-call grammar (one device call per token, the
llguidance mask computed on the host in between), same model, prompt and batch.

    python experiments/limits/host_step.py [WORKDIR]   # default: the tiny noise model

Per-token time is (t(512 tokens) - t(8 tokens)) / 504, the minimum of 4 runs each (the first
compiles), so that the prefill cancels. Timings are noisy on a shared machine.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from lm.data import tokenizer as tokenizer_lib  # pylint: disable=wrong-import-position
from lm.infer import chat as chat_lib  # pylint: disable=wrong-import-position
from lm.infer.engine import Engine  # pylint: disable=wrong-import-position
from lm.infer.sampling import SamplingParams  # pylint: disable=wrong-import-position

TOOL = {"name": "weather", "input_schema": {"type": "object", "properties": {
    "city": {"type": "string"}}, "required": ["city"]}}


def engine_for(workdir: str | None) -> Engine:
  if workdir:
    return Engine.from_workdir(workdir)
  from tests.infer import models  # pylint: disable=import-outside-toplevel
  return Engine(models.TINY.replace(max_seq_len=2048),
                jax.tree.map(jnp.asarray, models.noise_params()), tokenizer_lib.ByteTokenizer())


def main(workdir: str | None = None) -> None:
  engine = engine_for(workdir)
  chat = chat_lib.Chat(engine)
  messages = [{"role": "user", "content": "Weather in Paris?"}]
  for batch in (1, 8):
    times = {}
    for mode in ("none", "auto"):  # auto: free text under the grammar (never stops early)
      request = chat_lib.parse_request({"max_tokens": 512, "messages": messages,
                                        "tools": [TOOL], "tool_choice": {"type": mode}})
      prompt = chat.prompt(request)
      for n in (8, 512):
        best = float("inf")
        for _ in range(4):  # the first compiles
          start = time.perf_counter()
          engine.generate([prompt] * batch, max_new_tokens=n, sampling=SamplingParams(1.0),
                          seed=list(range(batch)), stop_token_ids=[],
                          constraints=[chat.constraint(request) for _ in range(batch)])
          best = min(best, time.perf_counter() - start)
        times[mode, n] = best
    free = (times["none", 512] - times["none", 8]) / 504 * 1e3
    constrained = (times["auto", 512] - times["auto", 8]) / 504 * 1e3
    print(f"batch {batch}: free {free:.2f} ms/token, constrained {constrained:.2f} ms/token "
          f"(host step +{constrained - free:.2f} ms)", flush=True)


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else None)
