"""Where text comes from, named by one string (`data.source`):

  builtin:stdlib        ~1.7 MB of English prose shipped with Python itself: the pydoc topic
                        pages and every long docstring of the standard library. No network.
  synthetic:markov      a first-order Markov chain over a small alphabet whose entropy rate is
                        known exactly, so a test can check that training approaches the bound.
                        Options after a colon: synthetic:markov:states=16,alpha=0.3,seed=0.
  text:<glob>           local UTF-8 text files, one document per file.

Each source becomes one token stream (documents separated by eos), split into train and
eval by interleaved chunks so both see every part of the corpus. Streams are cached as
.npy files under `data.cache_dir`.
"""

import ast
import dataclasses
import glob
import hashlib
import os
import pathlib
import sys
import sysconfig

from absl import logging
import numpy as np

EVAL_CHUNK_TOKENS = 1 << 15


@dataclasses.dataclass(frozen=True)
class TokenCorpus:
  train: np.ndarray            # [num_train_tokens] token ids
  eval: np.ndarray             # [num_eval_tokens]
  entropy_rate: float | None   # nats per token of the true source, where known


def stdlib_documents() -> list[str]:
  """pydoc topic pages and long docstrings of the standard library, in a fixed order."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  docs = [topics.topics[name] for name in sorted(topics.topics)]
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  skip = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
  for path in sorted(stdlib.rglob("*.py")):
    if skip.intersection(path.relative_to(stdlib).parts):
      continue
    try:
      tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc and len(doc) >= 200:
          docs.append(doc)
  return docs


def markov_chain(states: int = 16, alpha: float = 0.3, seed: int = 0
                 ) -> tuple[np.ndarray, float]:
  """A random transition matrix [S, S] and its entropy rate in nats per symbol."""
  rng = np.random.default_rng(seed)
  transitions = rng.dirichlet(np.full(states, alpha), size=states)
  eigenvalues, eigenvectors = np.linalg.eig(transitions.T)
  stationary = np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1))])
  stationary /= stationary.sum()
  with np.errstate(divide="ignore", invalid="ignore"):
    row_entropy = -np.sum(np.where(transitions > 0, transitions * np.log(transitions), 0), axis=1)
  return transitions, float(stationary @ row_entropy)


def markov_text(transitions: np.ndarray, length: int, seed: int) -> str:
  """`length` symbols of the chain, written as the letters a, b, c, ..."""
  rng = np.random.default_rng(seed + 1)
  cumulative = np.cumsum(transitions, axis=1)
  uniforms = rng.random(length)
  symbols = np.empty(length, np.int64)
  state = 0
  for i in range(length):
    state = min(int(np.searchsorted(cumulative[state], uniforms[i], side="right")),
                len(transitions) - 1)
    symbols[i] = state
  return (symbols.astype(np.uint8) + ord("a")).tobytes().decode("ascii")


def _parse_options(text: str) -> dict[str, str]:
  return dict(item.split("=", 1) for item in text.split(",") if item)


def documents(source: str) -> tuple[list[str], float | None]:
  """The documents of `source` and, for synthetic sources, the exact entropy rate."""
  scheme, _, rest = source.partition(":")
  if scheme == "builtin":
    if rest != "stdlib":
      raise ValueError(f"data.source={source!r}: the built-in corpus is 'builtin:stdlib'")
    return stdlib_documents(), None
  if scheme == "synthetic":
    kind, _, options = rest.partition(":")
    if kind != "markov":
      raise ValueError(f"data.source={source!r}: the synthetic corpus is 'synthetic:markov'")
    opts = _parse_options(options)
    states, alpha = int(opts.get("states", 16)), float(opts.get("alpha", 0.3))
    seed, length = int(opts.get("seed", 0)), int(opts.get("length", 1_000_000))
    if not 2 <= states <= 26:
      raise ValueError(f"data.source={source!r}: states must be in [2, 26]")
    transitions, rate = markov_chain(states, alpha, seed)
    return [markov_text(transitions, length, seed)], rate
  if scheme == "text":
    paths = sorted(glob.glob(os.path.expanduser(rest), recursive=True))
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
      raise FileNotFoundError(f"data.source={source!r}: the glob {rest!r} matches no files")
    docs = [pathlib.Path(p).read_text(encoding="utf-8", errors="replace") for p in paths]
    docs = [d for d in docs if d]
    if not docs:
      raise ValueError(f"data.source={source!r}: every matched file is empty")
    return docs, None
  raise ValueError(f"data.source={source!r} has an unknown scheme {scheme!r}; use "
                   "builtin:stdlib, synthetic:markov or text:<glob>")


def _cache_key(source: str, tokenizer_name: str) -> str:
  parts = [source, tokenizer_name, sys.version.split()[0]]
  if source.startswith("text:"):  # a changed file must not hit a stale cache
    for path in sorted(glob.glob(os.path.expanduser(source[5:]), recursive=True)):
      stat = os.stat(path)
      parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def token_stream(source: str, tokenizer, cache_dir: str) -> tuple[np.ndarray, float | None]:
  """All documents tokenized and joined with eos, cached on disk after the first call."""
  cache = pathlib.Path(os.path.expanduser(cache_dir)) / f"{_cache_key(source, tokenizer.name)}.npz"
  if cache.exists():
    with np.load(cache) as stored:
      rate = float(stored["entropy_rate"])
      return stored["tokens"], (None if np.isnan(rate) else rate)
  docs, rate = documents(source)
  dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
  tokens = np.concatenate([tokenizer.encode(d, add_eos=True) for d in docs]).astype(dtype)
  cache.parent.mkdir(parents=True, exist_ok=True)
  tmp = cache.with_name(cache.name + f".tmp{os.getpid()}.npz")
  np.savez(tmp, tokens=tokens, entropy_rate=np.nan if rate is None else rate)
  os.replace(tmp, cache)
  logging.info("Tokenized %s: %d documents, %d tokens, cached at %s", source, len(docs),
               len(tokens), cache)
  return tokens, rate


def load_corpus(source: str, tokenizer, cache_dir: str, eval_every_nth_chunk: int = 20
                ) -> TokenCorpus:
  """Train/eval split: every n-th chunk of EVAL_CHUNK_TOKENS tokens is held out."""
  tokens, rate = token_stream(source, tokenizer, cache_dir)
  chunk = min(EVAL_CHUNK_TOKENS, max(len(tokens) // (2 * eval_every_nth_chunk), 1))
  is_eval = (np.arange(len(tokens)) // chunk) % eval_every_nth_chunk == eval_every_nth_chunk - 1
  return TokenCorpus(train=tokens[~is_eval], eval=tokens[is_eval], entropy_rate=rate)
