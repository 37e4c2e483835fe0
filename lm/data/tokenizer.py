"""Tokenizers, named by `data.tokenizer`:

  byte       ids 0-255 are the UTF-8 bytes; needs no training and no files
  hf:DIR     a Hugging Face `tokenizer.json` (the `tokenizers` library) with the special
             tokens and chat template of its `tokenizer_config.json`

Special tokens (pad, bos, eos) and the reserved chat-role tokens belong to the tokenizer,
so code elsewhere asks the tokenizer for them instead of hard-coding ids.
"""

import functools
import hashlib
import json
import os
import re

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

  def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> np.ndarray:
    """The built-in chat template, as token ids: <bos>, then `<role> content <end_of_turn>`
    per message ({"role": "system" | "user" | "assistant", "content": str}), then
    `<assistant>` when a reply is to follow. Role tokens are ids no text encodes to, so no
    message can forge a turn. (HFTokenizer.render_chat returns the rendered text instead.)"""
    ids = [self.bos_id]
    for message in messages:
      role = f"<{message['role']}>"
      if role not in ("<system>", "<user>", "<assistant>"):
        raise ValueError(f"message role {message['role']!r} is not system, user or assistant")
      ids += [self.special_ids[role], *self.encode(message["content"]).tolist(),
              self.special_ids["<end_of_turn>"]]
    if add_generation_prompt:
      ids.append(self.special_ids["<assistant>"])
    return np.array(ids, np.int32)


@functools.lru_cache(maxsize=None)
def _bytes_to_unicode() -> dict[str, int]:
  """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[chr(b)] = b
    else:
      chars[chr(256 + extra)] = b
      extra += 1
  return chars


def _special_token(value) -> str | None:
  """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
  return value.get("content") if isinstance(value, dict) else value


class HFTokenizer:
  """A Hugging Face tokenizer directory: `tokenizer.json`, `tokenizer_config.json` and the
  chat template (`chat_template.jinja`, or the config's `chat_template`)."""

  def __init__(self, directory: str):
    # pylint: disable=import-outside-toplevel
    from etils import epath
    from tokenizers import Tokenizer
    if "://" not in directory:
      directory = os.path.abspath(os.path.expanduser(directory))
    self.directory = directory
    root = epath.Path(directory)
    if not (root / "tokenizer.json").exists():
      raise FileNotFoundError(f"data.tokenizer='hf:{directory}': no tokenizer.json there")
    raw = (root / "tokenizer.json").read_bytes()
    self._tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    self.name = f"hf:{self.directory}:{hashlib.sha256(raw).hexdigest()[:12]}"
    config = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
      if (root / file).exists():
        config.update(json.loads((root / file).read_text(encoding="utf-8")))
    # Token strings the chat template sees (bos_token, eos_token, ...), as transformers passes.
    self.special_tokens = {key: _special_token(value) for key, value in config.items()
                           if key.endswith("_token") and _special_token(value)}
    self.bos_id, self.eos_id, pad_id = (self._id(config, key)
                                        for key in ("bos_token", "eos_token", "pad_token"))
    self.pad_id = pad_id if pad_id is not None else (self.eos_id or 0)
    if (root / "chat_template.jinja").exists():
      self.chat_template = (root / "chat_template.jinja").read_text(encoding="utf-8")
    else:
      template = config.get("chat_template")
      if isinstance(template, list):  # named templates: use "default"
        template = {t["name"]: t["template"] for t in template}.get("default")
      self.chat_template = template
    vocab = self._tokenizer.get_vocab(with_added_tokens=True)
    self.vocab_size = max(vocab.values()) + 1
    self.token_bytes = self._token_bytes(vocab, json.loads(raw))

  def _id(self, config: dict, key: str) -> int | None:
    token = _special_token(config.get(key))
    if token is None:
      return None
    token_id = self._tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{self.directory}: {key}={token!r} is not in the vocabulary")
    return token_id

  def _token_bytes(self, vocab: dict[str, int], spec: dict) -> np.ndarray:
    """UTF-8 bytes each id stands for (0 for special tokens): the bits-per-byte denominator."""
    decoders = spec.get("decoder") or {}
    decoders = decoders.get("decoders", [decoders])
    byte_level = any(d.get("type") == "ByteLevel" for d in decoders)
    alphabet = _bytes_to_unicode()
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    counts = np.zeros(self.vocab_size, np.int32)
    for token, token_id in vocab.items():
      if token_id in special:
        continue
      if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):  # SentencePiece byte fallback
        counts[token_id] = 1
      elif byte_level:
        counts[token_id] = sum(1 if c in alphabet else len(c.encode()) for c in token)
      else:
        counts[token_id] = len(token.replace("\u2581", " ").encode())
    return counts

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    ids = self._tokenizer.encode(text, add_special_tokens=False).ids
    for add, token_id, name in ((add_bos, self.bos_id, "bos"), (add_eos, self.eos_id, "eos")):
      if add and token_id is None:
        raise ValueError(f"{self.directory} defines no {name}_token")
    return np.array(([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else []),
                    np.int32)

  def decode(self, ids) -> str:
    """Text of the ids; special tokens are dropped."""
    return self._tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                  skip_special_tokens=True)

  def render_chat(self, messages: list[dict], add_generation_prompt: bool = False,
                  **kwargs) -> str:
    """The conversation as the model was trained to read it, rendered from the chat template
    in a sandbox exactly as transformers' `apply_chat_template(..., tokenize=False)` does."""
    if not self.chat_template:
      raise ValueError(f"{self.directory} has no chat template (chat_template.jinja or "
                       "tokenizer_config.json chat_template)")
    template = _compile_chat_template(self.chat_template)
    return template.render(messages=messages, tools=None, documents=None,
                           add_generation_prompt=add_generation_prompt,
                           **{**self.special_tokens, **kwargs})


@functools.lru_cache(maxsize=8)
def _compile_chat_template(source: str):
  """A sandboxed jinja2 template with the settings and helpers transformers gives templates."""
  # pylint: disable=import-outside-toplevel
  import datetime
  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  class Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text; it renders as its body."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(source)


Tokenizer = ByteTokenizer | HFTokenizer
TOKENIZERS = {"byte": ByteTokenizer}


def get(name: str) -> Tokenizer:
  """The tokenizer `data.tokenizer` names: "byte" or "hf:DIR"."""
  if name.startswith("hf:"):
    return HFTokenizer(name[3:])
  if name not in TOKENIZERS:
    raise ValueError(f"data.tokenizer={name!r} is not known; choose one of {sorted(TOKENIZERS)} "
                     "or hf:DIR (a Hugging Face tokenizer.json directory)")
  return TOKENIZERS[name]()
