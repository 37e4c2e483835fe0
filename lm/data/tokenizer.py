"""Tokenizers. The byte-level one needs no training and no files: ids 0-255 are the bytes.

Special tokens (pad, bos, eos) and the reserved chat-role tokens belong to the tokenizer,
so code elsewhere asks the tokenizer for them instead of hard-coding ids.
"""

import numpy as np

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<system>", "<user>", "<assistant>", "<end_of_turn>")


class ByteTokenizer:
  """UTF-8 bytes as tokens 0-255, then the special tokens."""

  name = "byte"

  def __init__(self):
    self.special_ids = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}
    self.pad_id = self.special_ids["<pad>"]
    self.bos_id = self.special_ids["<bos>"]
    self.eos_id = self.special_ids["<eos>"]
    self.vocab_size = 256 + len(SPECIAL_TOKENS)
    # Bytes of text each id stands for: the denominator of bits per byte.
    self.token_bytes = np.array([1] * 256 + [0] * len(SPECIAL_TOKENS), np.int32)

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    ids = np.frombuffer(text.encode("utf-8", errors="replace"), np.uint8).astype(np.int32)
    prefix = [self.bos_id] if add_bos else []
    suffix = [self.eos_id] if add_eos else []
    return np.concatenate([np.array(prefix, np.int32), ids, np.array(suffix, np.int32)])

  def decode(self, ids) -> str:
    """Text of the byte tokens; special tokens are dropped, broken UTF-8 is replaced."""
    data = bytes(int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < 256)
    return data.decode("utf-8", errors="replace")


TOKENIZERS = {"byte": ByteTokenizer}


def get(name: str) -> ByteTokenizer:
  if name not in TOKENIZERS:
    raise ValueError(f"data.tokenizer={name!r} is not known; choose one of {sorted(TOKENIZERS)}")
  return TOKENIZERS[name]()
