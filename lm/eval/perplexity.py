"""Perplexity and bits per byte of held-out text, as training sees it.

A document is tokenized as the pipeline does (`<bos> text <eos>`, bos where the tokenizer
has one) and cut into windows of the model's context that overlap by one token, so every
token after the first is predicted exactly once, from the window it ends. Bits per byte
divide the summed negative log-likelihood (in bits) by the UTF-8 bytes of the text plus one
per document end (the eos prediction stands for the boundary, as a newline would for a byte
model), so models with different tokenizers compare; the same definition as training's
evaluation (lm/data/pipeline.py: eval_set).
"""

import math
from typing import Any, Iterable

import numpy as np


def document_windows(tokens: list[int], max_len: int) -> list[tuple[list[int], list[int]]]:
  """(prompt, continuation) windows of at most max_len tokens covering tokens[1:] once."""
  step = max_len - 1
  return [(tokens[begin:begin + 1], tokens[begin + 1:begin + 1 + step])
          for begin in range(0, len(tokens) - 1, step)]


def evaluate(engine: Any, documents: Iterable[str], batch_size: int = 64) -> dict:
  """{"documents", "tokens", "bytes", "nll_per_token", "perplexity", "bits_per_byte"}."""
  tokenizer = engine.tokenizer
  prompts, continuations, num_bytes, count = [], [], 0, 0
  for text in documents:
    ids = tokenizer.encode(text, add_bos=getattr(tokenizer, "bos_id", None) is not None,
                           add_eos=True)
    windows = document_windows([int(t) for t in ids], engine.config.max_seq_len)
    prompts += [p for p, _ in windows]
    continuations += [c for _, c in windows]
    num_bytes += len(text.encode("utf-8")) + 1
    count += 1
  if not prompts:
    raise ValueError("no documents with two or more tokens to measure perplexity on")
  scores = engine.score(prompts, continuations, batch_size=batch_size)
  nll = -float(sum(np.sum(s, dtype=np.float64) for s in scores))
  tokens = sum(map(len, continuations))
  return {"documents": count, "tokens": tokens, "bytes": num_bytes,
          "nll_per_token": nll / tokens, "perplexity": math.exp(nll / tokens),
          "bits_per_byte": nll / math.log(2) / max(num_bytes, 1)}
