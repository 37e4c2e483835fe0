"""A GGUF file's tokenizer metadata -> `tokenizer.json` + `tokenizer_config.json`, the files
lm's `hf:` tokenizer (lm/data/tokenizer.py HFTokenizer) reads.

GGUF stores the tokenizer as llama.cpp runs it: `tokenizer.ggml.model` ("gpt2": byte-level
BPE; "llama": SentencePiece BPE with byte fallback), the tokens, their types (1 normal,
2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), the merges (or, for SentencePiece,
scores that order them), the special ids, the chat template, and for byte-level BPE the
name of the pre-tokenizer (`tokenizer.ggml.pre`) whose split regexes llama.cpp hard-codes
per name (llama-vocab.cpp). Here each known name becomes the `tokenizers` pre-tokenizer
that splits the same way; an unknown name is an error rather than a silent wrong split.
"""

import json
import os
from typing import Any

_GPT2_SPLIT = None  # ByteLevel(use_regex=True) is GPT-2's regex
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (split each digit first, regex before the byte-level step).
PRE_TOKENIZERS = {
    "gpt2": (False, _GPT2_SPLIT), "mpt": (False, _GPT2_SPLIT), "olmo": (False, _GPT2_SPLIT),
    # llama.cpp: "\p{N}" then GPT-2's regex (SmolLM's tokenizer.json: Digits + ByteLevel).
    "smollm": (True, _GPT2_SPLIT), "starcoder": (True, _GPT2_SPLIT),
    "refact": (True, _GPT2_SPLIT), "codeshell": (True, _GPT2_SPLIT),
    "llama3": (False, _LLAMA3_SPLIT), "llama-bpe": (False, _LLAMA3_SPLIT),
    "llama-v3": (False, _LLAMA3_SPLIT), "smaug-bpe": (False, _LLAMA3_SPLIT),
    "dbrx": (False, _LLAMA3_SPLIT), "falcon3": (False, _LLAMA3_SPLIT),
    "qwen2": (False, _QWEN2_SPLIT), "deepseek-r1-qwen": (False, _QWEN2_SPLIT),
}
_CONTROL, _USER_DEFINED = 3, 4
_SPM_SPACE = "\u2581"


def _byte_level(meta: dict[str, Any], path: str):
  # pylint: disable=import-outside-toplevel
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  pre = meta.get("tokenizer.ggml.pre", "gpt2")
  if pre not in PRE_TOKENIZERS:
    raise ValueError(f"{path}: tokenizer.ggml.pre={pre!r} (the pre-tokenizer) is not known to "
                     f"the GGUF import; known: {', '.join(sorted(PRE_TOKENIZERS))}")
  digits, split = PRE_TOKENIZERS[pre]
  tokens = meta["tokenizer.ggml.tokens"]
  merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
  tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                   fuse_unk=False, byte_fallback=False))
  steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
  if split is None:
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
  else:
    steps += [pre_tokenizers.Split(Regex(split), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
  tokenizer.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
  tokenizer.decoder = decoders.ByteLevel()
  return tokenizer


def _spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
  """Merges a SentencePiece BPE vocabulary implies: every split of a token into two tokens,
  best (highest) score of the merged token first."""
  vocab = {t: i for i, t in enumerate(tokens)}
  merges = []
  for token, score in zip(tokens, scores):
    local = [(token[:k], token[k:]) for k in range(1, len(token))
             if token[:k] in vocab and token[k:] in vocab]
    local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges += [(score, left, right) for left, right in local]
  merges.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
  return [(left, right) for _, left, right in merges]


def _sentencepiece(meta: dict[str, Any], arch: str):
  """SentencePiece BPE as Llama 2's tokenizer.json spells it: spaces as U+2581, an optional
  leading one, byte fallback."""
  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, normalizers
  tokens = list(meta["tokenizer.ggml.tokens"])
  if arch == "gemma":  # Gemma files store runs of spaces as spaces, not U+2581
    tokens = [_SPM_SPACE * len(t) if t and not t.strip(" ") else t for t in tokens]
  if meta.get("tokenizer.ggml.merges"):
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
  elif arch == "gemma":  # Gemma's scores do not follow its merge order; the file order does
    merges = _spm_merges(tokens, [-i for i in range(len(tokens))])
  else:
    merges = _spm_merges(tokens, list(meta["tokenizer.ggml.scores"]))
  unk = meta.get("tokenizer.ggml.unknown_token_id")
  tokenizer = Tokenizer(models.BPE(
      vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=True,
      byte_fallback=True, unk_token=tokens[unk] if unk is not None else None))
  prefix = meta.get("tokenizer.ggml.add_space_prefix", arch != "gemma")
  steps = [normalizers.Prepend(_SPM_SPACE)] if prefix else []
  tokenizer.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", _SPM_SPACE)])
  steps = [decoders.Replace(_SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
  tokenizer.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
  return tokenizer, tokens


def build(meta: dict[str, Any], path: str = ""):
  """(tokenizers.Tokenizer, tokenizer_config dict) of a GGUF file's metadata."""
  from tokenizers import AddedToken  # pylint: disable=import-outside-toplevel
  kind = meta.get("tokenizer.ggml.model")
  tokens = meta.get("tokenizer.ggml.tokens")
  if not tokens:
    raise ValueError(f"{path}: no tokenizer.ggml.tokens: the file has no tokenizer")
  if kind == "gpt2":
    tokenizer = _byte_level(meta, path)
  elif kind == "llama":
    tokenizer, tokens = _sentencepiece(meta, meta.get("general.architecture", ""))
  else:
    raise ValueError(f"{path}: tokenizer.ggml.model={kind!r} is not supported; the GGUF import "
                     "reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece BPE)")
  types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
  # Control tokens (<|im_start|>) are special; user-defined ones (<think>) match whole too.
  tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == _CONTROL])
  tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, k in zip(tokens, types) if k == _USER_DEFINED])
  config: dict[str, Any] = {}
  for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                    ("pad_token", "padding")):
    token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
    if token_id is not None:
      config[name] = tokens[int(token_id)]
  for flag in ("add_bos_token", "add_eos_token"):
    if meta.get(f"tokenizer.ggml.{flag}") is not None:
      config[flag] = bool(meta[f"tokenizer.ggml.{flag}"])
  if meta.get("tokenizer.chat_template"):
    config["chat_template"] = meta["tokenizer.chat_template"]
  return tokenizer, config


def write(meta: dict[str, Any], directory: str, path: str = "") -> None:
  """Writes tokenizer.json and tokenizer_config.json (chat template included)."""
  tokenizer, config = build(meta, path)
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
