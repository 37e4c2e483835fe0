"""Tokenizers, named by `data.tokenizer`:

  byte       ids 0-255 are the UTF-8 bytes; needs no training and no files
  spm:PATH   a SentencePiece model file (local or gs://), e.g. one `lm tokenizer` trained
             with `train_sentencepiece`, or a Llama / Gemma `tokenizer.model`
  hf:DIR     a Hugging Face `tokenizer.json` (the `tokenizers` library) with the special
             tokens and chat template of its `tokenizer_config.json`

Special tokens (pad, bos, eos) and the reserved chat-role tokens belong to the tokenizer,
so code elsewhere asks the tokenizer for them instead of hard-coding ids.
"""

import functools
import hashlib
import io
import json
import os
from typing import Iterable, Iterator, Sequence

import numpy as np

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<system>", "<user>", "<assistant>", "<end_of_turn>")
# Private-use characters around the text of a template's {% generation %} blocks, when asked
# for (lm/data/formats.py finds the assistant's tokens with them).
GENERATION_START, GENERATION_END = "\ue000", "\ue001"


def _with_specials(ids: list[int], tokenizer, add_bos: bool, add_eos: bool,
                   missing: str) -> np.ndarray:
  """`ids` with the tokenizer's bos / eos around them. A missing one is an error: `missing`
  with "bos" or "eos" in place of its `{}`."""
  for add, token_id, special in ((add_bos, tokenizer.bos_id, "bos"),
                                 (add_eos, tokenizer.eos_id, "eos")):
    if add and token_id is None:
      raise ValueError(missing.replace("{}", special))
  return np.array(([tokenizer.bos_id] if add_bos else []) + list(ids)
                  + ([tokenizer.eos_id] if add_eos else []), np.int32)


class ByteTokenizer:
  """UTF-8 bytes as tokens 0-255, then the special tokens."""

  name = "byte"

  def __init__(self):
    self.special_ids = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}
    self.pad_id = self.special_ids["<pad>"]
    self.bos_id = self.special_ids["<bos>"]
    self.eos_id = self.special_ids["<eos>"]
    self.vocab_size = 256 + len(SPECIAL_TOKENS)

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
    return _render_role_chat(self, messages, add_generation_prompt)


def _render_role_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> np.ndarray:
  """The built-in chat template of ByteTokenizer and SentencePieceTokenizer, as token ids."""
  ids = [tokenizer.bos_id]
  for message in messages:
    role = f"<{message['role']}>"
    if role not in ("<system>", "<user>", "<assistant>"):
      raise ValueError(f"message role {message['role']!r} is not system, user or assistant")
    ids += [tokenizer.special_ids[role], *tokenizer.encode(message["content"]).tolist(),
            tokenizer.special_ids["<end_of_turn>"]]
  if add_generation_prompt:
    ids.append(tokenizer.special_ids["<assistant>"])
  return np.array(ids, np.int32)


# A model from train_sentencepiece: <pad> 0, <bos> 1, <eos> 2, <unk> 3, the role tokens 4-7
# (control pieces: no text encodes to them), the byte pieces <0x00>..<0xFF> 8-263, then the
# learned pieces.
_ROLE_TOKENS = SPECIAL_TOKENS[3:]
_SPM_RESERVED = len(SPECIAL_TOKENS) + 1 + 256
_SPM_SPACE = "\u2581"        # SentencePiece writes a space as this visible character
_SPM_CHUNK_CHARS = 2048      # documents are cut into training sentences of about this size


class SentencePieceTokenizer:
  """A SentencePiece model file: `data.tokenizer="spm:PATH"` (local or gs://).

  Models from `train_sentencepiece` give text back exactly: no normalization, no dummy
  prefix, byte pieces for whatever the vocabulary lacks, and role tokens that are control
  pieces, so `render_chat` works as ByteTokenizer's. Other models (a Llama or Gemma
  `tokenizer.model`) load too, with their own bos / eos / pad (pad falls back to eos, then
  0); render_chat says which role tokens they lack."""

  def __init__(self, path: str):
    # pylint: disable=import-outside-toplevel
    import sentencepiece
    from etils import epath
    from sentencepiece import sentencepiece_model_pb2
    if "://" not in path:
      path = os.path.abspath(os.path.expanduser(path))
    self.path = path
    if not epath.Path(path).exists():
      raise FileNotFoundError(f"data.tokenizer='spm:{path}': no such file (`lm tokenizer` "
                              "trains one)")
    raw = epath.Path(path).read_bytes()
    try:
      proto = sentencepiece_model_pb2.ModelProto.FromString(raw)
      self._sp = sp = sentencepiece.SentencePieceProcessor(model_proto=raw)
    except Exception as e:  # protobuf's DecodeError or SentencePiece's RuntimeError
      raise ValueError(f"data.tokenizer='spm:{path}' is not a SentencePiece model: {e}") from e
    self.name = f"spm:{path}:{hashlib.sha256(raw).hexdigest()[:12]}"
    self.vocab_size = sp.vocab_size()
    self.bos_id, self.eos_id = (i if i >= 0 else None for i in (sp.bos_id(), sp.eos_id()))
    self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else (self.eos_id or 0)
    self.special_ids = {token: i for token, i in (("<pad>", self.pad_id), ("<bos>", self.bos_id),
                                                  ("<eos>", self.eos_id)) if i is not None}
    for token in _ROLE_TOKENS:
      i = sp.piece_to_id(token)
      if sp.id_to_piece(i) == token and sp.is_control(i):
        self.special_ids[token] = i
    ids = range(self.vocab_size)
    # Ids that stand for text; control and unknown pieces decode to nothing.
    self._is_text = np.array([not (sp.is_control(i) or sp.is_unknown(i)) for i in ids])
    # SentencePiece reads a "▁" in the text as a space; a model that keeps text exact (no
    # dummy prefix, no whitespace folding) spells it in byte pieces instead, so it survives.
    space_bytes = [sp.piece_to_id(f"<0x{b:02X}>") for b in _SPM_SPACE.encode()]
    spec = proto.normalizer_spec
    exact = not spec.add_dummy_prefix and not spec.remove_extra_whitespaces
    self._space_ids = space_bytes if exact and all(map(sp.is_byte, space_bytes)) else None

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    if self._space_ids is not None and _SPM_SPACE in text:
      first, *rest = text.split(_SPM_SPACE)
      ids = self._sp.encode(first)
      for part in rest:
        ids += self._space_ids + self._sp.encode(part)
    else:
      ids = self._sp.encode(text)
    return _with_specials(ids, self, add_bos, add_eos,
                          f"data.tokenizer='spm:{self.path}' has no {{}} piece")

  def decode(self, ids) -> str:
    """Text of the ids; special tokens (and ids beyond the vocabulary) are dropped."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    ids = ids[(ids >= 0) & (ids < self.vocab_size)]
    return self._sp.decode(ids[self._is_text[ids]].tolist())

  def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> np.ndarray:
    """ByteTokenizer's chat template in this model's ids (models from `lm tokenizer`)."""
    missing = [t for t in ("<bos>", *_ROLE_TOKENS) if t not in self.special_ids]
    if missing:
      raise ValueError(f"data.tokenizer='spm:{self.path}' has no control pieces for "
                       f"{', '.join(missing)}, which the built-in chat template needs; "
                       "train a tokenizer that has them with `lm tokenizer`")
    return _render_role_chat(self, messages, add_generation_prompt)


def _training_sentences(texts: Iterable[str], max_chars: int, seen: dict) -> Iterator[str]:
  """The texts cut at line ends into sentences of about _SPM_CHUNK_CHARS characters, up to
  max_chars in all. SentencePiece skips sentences over its length limit; whole lines keep
  newlines inside sentences, where pieces can learn them. `seen` records the characters given
  and the error reading `texts` raised (SentencePiece reports it as a RuntimeError)."""
  try:
    for text in texts:
      start = 0
      while start < len(text):
        if seen["chars"] >= max_chars:
          return
        end = min(start + _SPM_CHUNK_CHARS, len(text))
        newline = text.rfind("\n", start, end) if end < len(text) else -1
        end = newline + 1 if newline >= start else end
        seen["chars"] += end - start
        yield text[start:end]
        start = end
  except Exception as e:
    seen["error"] = e
    raise


def train_sentencepiece(texts: Iterable[str], model_path: str, vocab_size: int,
                        model_type: str = "bpe", max_chars: int = 10_000_000
                        ) -> SentencePieceTokenizer:
  """Trains a SentencePiece model (`data.tokenizer="spm:<model_path>"`) on the first
  `max_chars` characters of `texts` and writes it atomically to `model_path`.

  The model gives any text back exactly, as the loss in bits per byte assumes: identity
  normalization, whitespace kept as it is (runs of spaces may be pieces, for code), byte
  fallback for rare characters, digits split. The special tokens have the ids of
  SentencePieceTokenizer's table; the role tokens are control pieces that no text encodes to."""
  # pylint: disable=import-outside-toplevel
  import sentencepiece
  from etils import epath
  if model_type not in ("bpe", "unigram"):
    raise ValueError(f"model_type={model_type!r} is not 'bpe' or 'unigram'")
  if vocab_size <= _SPM_RESERVED:
    raise ValueError(f"vocab_size={vocab_size} leaves no room for learned pieces: the "
                     f"special and byte pieces take {_SPM_RESERVED}")
  if max_chars <= 0:
    raise ValueError(f"max_chars={max_chars} must be positive")
  seen = {"chars": 0, "error": None}
  model = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=_training_sentences(texts, max_chars, seen), model_writer=model,
        model_type=model_type, vocab_size=vocab_size,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece="<pad>", bos_piece="<bos>", eos_piece="<eos>", unk_piece="<unk>",
        control_symbols=list(_ROLE_TOKENS), byte_fallback=True, split_digits=True,
        character_coverage=0.9995, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, max_sentence_length=4 * _SPM_CHUNK_CHARS,
        num_threads=os.cpu_count() or 1, minloglevel=2)
  except RuntimeError as e:
    if seen["error"] is not None:
      raise seen["error"]
    if not seen["chars"]:
      raise ValueError("train_sentencepiece: the texts are empty") from e
    raise ValueError(f"vocab_size={vocab_size}, model_type={model_type!r}: SentencePiece "
                     f"cannot train on these {seen['chars']:,} characters: {e}") from e
  if "://" not in model_path:
    model_path = os.path.abspath(os.path.expanduser(model_path))
  path = epath.Path(model_path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
  tmp.write_bytes(model.getvalue())
  tmp.replace(path)
  return SentencePieceTokenizer(model_path)


def sample_documents(documents: Sequence[str], max_chars: int | None = None, seed: int = 0
                     ) -> Iterator[str]:
  """The documents in a random order, read lazily, until `max_chars` characters: a sample of
  a large corpus that a tokenizer can train on (or be measured on) without reading it all."""
  # At most 2^20 draws: a tokenizer trains on millions of characters, not on all of C4.
  order = np.random.default_rng(seed).choice(len(documents), min(len(documents), 1 << 20),
                                             replace=False)
  chars = 0
  for i in order:
    if max_chars is not None and chars >= max_chars:
      return
    document = documents[int(i)]
    chars += len(document)
    yield document


def bytes_per_token(tokenizer, texts: Iterable[str]) -> float:
  """UTF-8 bytes per token: how much a tokenizer compresses text (the byte tokenizer: 1)."""
  num_bytes = num_tokens = 0
  for text in texts:
    num_bytes += len(text.encode("utf-8"))
    num_tokens += len(tokenizer.encode(text))
  return num_bytes / max(num_tokens, 1)


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

  def _id(self, config: dict, key: str) -> int | None:
    token = _special_token(config.get(key))
    if token is None:
      return None
    token_id = self._tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{self.directory}: {key}={token!r} is not in the vocabulary")
    return token_id

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    ids = self._tokenizer.encode(text, add_special_tokens=False).ids
    return _with_specials(ids, self, add_bos, add_eos, f"{self.directory} defines no {{}}_token")

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of `text` (as `encode`) and the [start, end) characters of `text` each stands for."""
    encoding = self._tokenizer.encode(text, add_special_tokens=False)
    return encoding.ids, encoding.offsets

  def decode(self, ids) -> str:
    """Text of the ids; special tokens are dropped."""
    return self._tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                  skip_special_tokens=True)

  def render_chat(self, messages: list[dict], add_generation_prompt: bool = False,
                  mark_generation: bool = False, **kwargs) -> str:
    """The conversation as the model was trained to read it, rendered from the chat template
    in a sandbox exactly as transformers' `apply_chat_template(..., tokenize=False)` does.
    `mark_generation`: the text of {% generation %} blocks between GENERATION_START and
    GENERATION_END."""
    if not self.chat_template:
      raise ValueError(f"{self.directory} has no chat template (chat_template.jinja or "
                       "tokenizer_config.json chat_template)")
    template = _compile_chat_template(self.chat_template, mark_generation)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                           **{"tools": None, "documents": None, **self.special_tokens,
                              **kwargs})


@functools.lru_cache(maxsize=8)
def _compile_chat_template(source: str, mark_generation: bool = False):
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
      return GENERATION_START + caller() + GENERATION_END if mark_generation else caller()

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(source)


Tokenizer = ByteTokenizer | SentencePieceTokenizer | HFTokenizer
TOKENIZERS = {"byte": ByteTokenizer}


CHAT_TEMPLATE_FILE = "chat_template.jinja"  # in a workdir: the template its model was tuned on


def save_chat_template(tokenizer: Tokenizer, workdir: str) -> None:
  """Writes a Hugging Face tokenizer's chat template into `workdir`, so that the model is
  served with the template it was trained on even if the tokenizer directory changes. (The
  byte and SentencePiece templates are the role tokens, fixed by the tokenizer itself.)"""
  from etils import epath  # pylint: disable=import-outside-toplevel
  template = getattr(tokenizer, "chat_template", None)
  if template:
    (epath.Path(workdir) / CHAT_TEMPLATE_FILE).write_text(template)


def for_workdir(name: str, workdir: str) -> Tokenizer:
  """The tokenizer `name` with the chat template saved in `workdir`, where there is one."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  tokenizer = get(name)
  saved = epath.Path(workdir) / CHAT_TEMPLATE_FILE
  if isinstance(tokenizer, HFTokenizer) and saved.exists():
    tokenizer.chat_template = saved.read_text()
  return tokenizer


def get(name: str) -> Tokenizer:
  """The tokenizer `data.tokenizer` names: "byte", "spm:PATH" or "hf:DIR"."""
  if name.startswith("hf:"):
    return HFTokenizer(name[3:])
  if name.startswith("spm:"):
    return SentencePieceTokenizer(name[4:])
  if name not in TOKENIZERS:
    raise ValueError(f"data.tokenizer={name!r} is not known; choose one of {sorted(TOKENIZERS)}, "
                     "spm:PATH (a SentencePiece model) or hf:DIR (a Hugging Face tokenizer.json "
                     "directory)")
  return TOKENIZERS[name]()
