import collections
import math
import os

import numpy as np
import pytest

from lm.data import sources
from lm.data import tokenizer as tokenizer_lib


def test_stdlib_corpus_is_real_text_over_a_megabyte():
  docs = sources.stdlib_documents()
  text = "\n".join(docs)
  assert len(text.encode("utf-8")) > 1_000_000
  words = text.split()
  common = collections.Counter(w.lower() for w in words).most_common(10)
  assert "the" in dict(common)  # English prose, not code or noise
  assert sources.stdlib_documents() == docs  # same order every time


def test_markov_entropy_rate_matches_empirical_estimate():
  transitions, rate = sources.markov_chain(states=6, alpha=0.5, seed=3)
  np.testing.assert_allclose(transitions.sum(axis=1), 1.0, rtol=1e-12)
  assert 0 < rate < math.log(6)
  text = sources.markov_text(transitions, 200_000, seed=3)
  symbols = np.frombuffer(text.encode(), np.uint8) - ord("a")
  pairs = collections.Counter(zip(symbols[:-1].tolist(), symbols[1:].tolist()))
  firsts = collections.Counter(symbols[:-1].tolist())
  empirical = -sum(c / (len(symbols) - 1) * math.log(c / firsts[a]) for (a, _), c in pairs.items())
  assert abs(empirical - rate) < 0.02


def test_text_glob_reads_every_file_and_splits(tmp_path):
  for i in range(3):
    (tmp_path / f"doc{i}.txt").write_text(f"document number {i} " * 2000)
  tok = tokenizer_lib.get("byte")
  corpus = sources.load_corpus(f"text:{tmp_path}/*.txt", tok, str(tmp_path / "cache"))
  total = len(corpus.train) + len(corpus.eval)
  assert total == sum(len(f"document number {i} " * 2000) + 1 for i in range(3))
  assert 0 < len(corpus.eval) < 0.2 * total
  assert np.sum(corpus.train == tok.eos_id) + np.sum(corpus.eval == tok.eos_id) == 3
  assert corpus.entropy_rate is None


def test_token_stream_is_cached_and_invalidated_by_edits(tmp_path):
  path = tmp_path / "a.txt"
  path.write_text("hello world")
  tok = tokenizer_lib.get("byte")
  cache = tmp_path / "cache"
  first, _ = sources.token_stream(f"text:{path}", tok, str(cache))
  assert len(os.listdir(cache)) == 1
  again, _ = sources.token_stream(f"text:{path}", tok, str(cache))
  np.testing.assert_array_equal(first, again)
  assert len(os.listdir(cache)) == 1
  path.write_text("hello there, world")
  os.utime(path, ns=(1, 10**18))
  edited, _ = sources.token_stream(f"text:{path}", tok, str(cache))
  assert tok.decode(edited) == "hello there, world"


@pytest.mark.parametrize("source, message", [
    ("text:/nonexistent/dir/*.txt", "matches no files"),
    ("ftp:somewhere", "unknown scheme"),
    ("builtin:wikipedia", "builtin:stdlib"),
    ("synthetic:markov:states=40", "states must be"),
])
def test_bad_sources_name_the_field(tmp_path, source, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
    sources.load_corpus(source, tokenizer_lib.get("byte"), str(tmp_path))
  assert "data.source" in str(info.value)


def test_empty_files_are_an_error(tmp_path):
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="empty"):
    sources.documents(f"text:{tmp_path}/*.txt")
