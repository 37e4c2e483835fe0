"""Constrained decoding: a grammar decides which tokens may come next, one step at a time.

Letters: V vocab, W = ceil(V / 32) words of a token bitmask.

The grammar engine is llguidance (Lark-like grammars with embedded JSON schemas, compiled
lazily, masks computed in Rust in tens of microseconds): `Constraint(grammar, vocab)` holds
one row's matcher; the engine asks it for the row's bitmask before each token and tells it
the token sampled. Bit t of word t // 32 is set when token t is allowed; tokens the
tokenizer does not know (a model vocabulary padded beyond it) are never allowed.

`vocabulary(tokenizer, stop_ids)` wraps any `lm` tokenizer (byte, SentencePiece, Hugging
Face) for llguidance once; `stop_ids` are the tokens that end a reply, which a finished
grammar allows (and nothing else).
"""

import functools
import json
from typing import Any, Sequence

import llguidance
import llguidance.numpy
import numpy as np


def words(vocab_size: int) -> int:
  return (vocab_size + 31) // 32


class _TokenBytes:
  """The tokenizer as llguidance's TokenizerWrapper reads it: each id's bytes, the special
  ids (never text), and an encoder."""

  def __init__(self, tokens: list[bytes], special: list[int], eos: int, bos: int | None, encode):
    self.tokens, self.special_token_ids = tokens, special
    self.eos_token_id, self.bos_token_id = eos, bos
    self._encode = encode

  def __call__(self, text: bytes | str) -> list[int]:
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    return [int(t) for t in self._encode(text)]


def _byte_tokens(tokenizer: Any) -> tuple[list[bytes], list[int]]:
  names = {i: name for name, i in tokenizer.special_ids.items()}
  tokens = [bytes([i]) for i in range(256)]
  tokens += [names.get(i, f"<unused{i}>").encode() for i in range(256, tokenizer.vocab_size)]
  return tokens, list(range(256, tokenizer.vocab_size))


def _sentencepiece_tokens(tokenizer: Any) -> tuple[list[bytes], list[int]]:
  sp = tokenizer._sp  # pylint: disable=protected-access
  tokens, special = [], []
  for i in range(tokenizer.vocab_size):
    piece = sp.id_to_piece(i)
    if sp.is_byte(i):
      tokens.append(bytes([int(piece[3:5], 16)]))
    elif sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
      tokens.append(piece.encode())
      special.append(i)
    else:
      tokens.append(piece.replace("\u2581", " ").encode())
  return tokens, special


@functools.lru_cache(maxsize=4)
def _vocabulary(tokenizer: Any, stop_ids: tuple[int, ...]) -> llguidance.LLTokenizer:
  if hasattr(tokenizer, "_tokenizer"):  # HFTokenizer: llguidance reads tokenizer.json itself
    raw = tokenizer._tokenizer.to_str()  # pylint: disable=protected-access
    return llguidance.LLTokenizer(raw, eos_token=list(stop_ids))
  if hasattr(tokenizer, "_sp"):
    tokens, special = _sentencepiece_tokens(tokenizer)
  else:
    tokens, special = _byte_tokens(tokenizer)
  wrapper = _TokenBytes(tokens, special, stop_ids[0], tokenizer.bos_id, tokenizer.encode)
  return llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapper), eos_token=list(stop_ids))


def vocabulary(tokenizer: Any, stop_ids: Sequence[int]) -> llguidance.LLTokenizer:
  """llguidance's view of `tokenizer` (built once: about a second for a 50k vocabulary)."""
  if not stop_ids:
    raise ValueError("constrained decoding needs a token that ends the reply (stop_ids)")
  return _vocabulary(tokenizer, tuple(int(i) for i in stop_ids))


def json_grammar(schema: dict) -> str:
  """The grammar of compact JSON (no optional whitespace) valid under `schema`."""
  return llguidance.LLMatcher.grammar_from_json_schema(
      schema, overrides={"whitespace_flexible": False, "item_separator": ",",
                         "key_separator": ":"})


def check_grammar(grammar: str, vocab: llguidance.LLTokenizer) -> None:
  """ValueError with llguidance's message when the grammar does not compile."""
  error = llguidance.LLMatcher.validate_grammar(grammar, vocab)
  if error and not error.startswith("WARNING"):
    raise ValueError(error)


def lark(source: str) -> str:
  return llguidance.LLMatcher.grammar_from_lark(source)


def lark_json(schema: dict) -> str:
  """`schema` as an embedded JSON rule of a Lark grammar, compact like `json_grammar`."""
  options = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
  return "%json " + json.dumps({**schema, "x-guidance": options})


class Constraint:
  """One row's grammar state: `fill(mask)` before each token, `advance(token)` after."""

  def __init__(self, grammar: str, vocab: llguidance.LLTokenizer):
    self.vocab = vocab
    self.matcher = llguidance.LLMatcher(vocab, grammar, log_level=0)
    if self.matcher.is_error():
      raise ValueError(self.matcher.get_error())

  def fill(self, mask: np.ndarray) -> None:
    """Writes the allowed next tokens into mask [W] int32 (words beyond the tokenizer's
    vocabulary cleared)."""
    mask[:] = 0
    target = np.zeros((1, words(self.vocab.vocab_size)), np.int32)
    llguidance.numpy.fill_next_token_bitmask(self.matcher, target)
    mask[:target.shape[1]] = target[0, :mask.shape[0]]

  def advance(self, token: int) -> None:
    if self.matcher.is_stopped():  # the stop token that ends the row
      return
    if not self.matcher.consume_token(int(token)):
      raise RuntimeError(f"token {token} broke the grammar: {self.matcher.get_error()}")

  @property
  def finished(self) -> bool:
    return self.matcher.is_stopped() or self.matcher.is_accepting()


def allowed(mask: np.ndarray, vocab_size: int) -> np.ndarray:
  """The bitmask [..., W] as booleans [..., V] (host side, for tests and debugging)."""
  bits = np.unpackbits(mask.astype("<i4").view(np.uint8), axis=-1, bitorder="little")
  return bits[..., :vocab_size].astype(bool)
