"""Retrieval-augmented chat: a folder of documents, BM25 over overlapping passages, and a
system prompt that numbers the passages so the reply can cite them.

    index = Index.from_folder("docs/")                   # *.txt and *.md, recursively
    passages = index.search("How long is the Zorblax river?", k=3)
    system = grounded_system(passages, "Be brief.")      # [1] (docs/rivers.txt) ...
    cited(reply_text, passages)                          # the passages "[n]" points at

Documents are cut into passages of `size` words, each starting `size - overlap` words after
the previous one, so a fact that straddles a cut is whole in one of them. Ranking is BM25
(`bm25s`: Lucene's variant, English stopwords removed), or with `dense=engine` the cosine
similarity of the model's mean-pooled hidden states (lm/infer/dense.py). `lm chat
--docs=DIR` and `lm serve --docs=DIR` (a request's "retrieval" field) use it.
"""

import dataclasses
import os
import re
from typing import Any, Sequence

import bm25s

EXTENSIONS = (".txt", ".md")
GROUNDING = ("Answer from the numbered sources below and cite the ones you use as [n]. If "
             "they do not hold the answer, say that you do not know.")
_CITATION = re.compile(r"\[(\d+)\]")


@dataclasses.dataclass(frozen=True)
class Passage:
  source: str   # the file, relative to the indexed folder
  start: int    # index of its first word in the file
  text: str


def chunk(text: str, size: int = 120, overlap: int = 30) -> list[tuple[int, str]]:
  """(first word's index, text) of each passage of `size` words, consecutive passages
  sharing `overlap` words; a text shorter than `size` is one passage."""
  if not 0 <= overlap < size:
    raise ValueError(f"retrieval overlap={overlap} must be in [0, size={size})")
  words = text.split()
  step = size - overlap
  starts = range(0, max(len(words) - overlap, 1), step)
  return [(s, " ".join(words[s:s + size])) for s in starts if words[s:s + size]]


def _tokens(texts: Sequence[str]) -> list[list[str]]:
  return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


class Index:
  """BM25 over passages, or with `dense` (an Engine) the cosine of its model's mean-pooled
  hidden states (lm/infer/dense.py); `search` returns the best first."""

  def __init__(self, passages: Sequence[Passage], dense: Any = None):
    if not passages:
      raise ValueError("retrieval: no passages to index (no .txt / .md text found)")
    self.passages = list(passages)
    self._dense = None
    if dense is not None:
      from lm.infer import dense as dense_lib  # pylint: disable=import-outside-toplevel
      self._dense = dense_lib.Ranker(dense, [p.text for p in self.passages])
    self._bm25 = bm25s.BM25()
    self._bm25.index(bm25s.tokenize([p.text for p in self.passages], stopwords="en",
                                    show_progress=False), show_progress=False)

  @classmethod
  def from_folder(cls, folder: str, size: int = 120, overlap: int = 30,
                  dense: Any = None) -> "Index":
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
      raise ValueError(f"--docs={folder}: not a directory")
    passages = []
    for root, _, files in sorted(os.walk(folder)):
      for name in sorted(files):
        if not name.endswith(EXTENSIONS):
          continue
        path = os.path.join(root, name)
        with open(path, encoding="utf-8", errors="replace") as f:
          text = f.read()
        source = os.path.relpath(path, folder)
        passages += [Passage(source, start, piece) for start, piece in chunk(text, size, overlap)]
    return cls(passages, dense)

  def search(self, query: str, k: int = 3) -> list[Passage]:
    """The k passages that score highest for `query` (fewer if the index is smaller, none
    with a zero score)."""
    k = min(k, len(self.passages))
    if k <= 0 or not query.strip():
      return []
    if self._dense is not None:
      return [self.passages[i] for i, _ in self._dense.top(query, k)]
    tokens = _tokens([query])
    if not tokens[0]:
      return []
    ids, scores = self._bm25.retrieve(tokens, k=k, show_progress=False)
    return [self.passages[int(i)] for i, s in zip(ids[0], scores[0]) if s > 0]


def grounded_system(passages: Sequence[Passage], system: str | None = None) -> str:
  """The system prompt with the passages numbered from 1: `[n] (source) text`."""
  lines = [system, ""] if system else []
  lines.append(GROUNDING)
  lines += [f"[{n}] ({p.source}) {p.text}" for n, p in enumerate(passages, start=1)]
  return "\n".join(lines)


def cited(text: str, passages: Sequence[Passage]) -> list[int]:
  """The passage numbers (1-based, in order of first citation) that `text` cites as [n];
  numbers no passage has are ignored."""
  out = []
  for match in _CITATION.finditer(text):
    n = int(match.group(1))
    if 1 <= n <= len(passages) and n not in out:
      out.append(n)
  return out


def describe(passages: Sequence[Passage], citations: Sequence[int]) -> dict:
  """The response's "retrieval" field: the passages given, numbered, and those cited."""
  return {"passages": [{"index": n, "source": p.source, "start": p.start, "text": p.text}
                       for n, p in enumerate(passages, start=1)],
          "cited": list(citations)}
