"""Chat: conversations through the model's chat template, shaped like the Messages API.

    client = lm.Client("runs/quickstart")
    r = client.messages.create(max_tokens=200, system="Be brief.",
                               messages=[{"role": "user", "content": "Hello"}])
    r.content[0].text, r.stop_reason, r.usage.output_tokens

The request and the response have the shapes of Anthropic's Messages API, so code written
against it (and `lm serve`, which speaks it over HTTP) reads the same. A conversation is
a system prompt and alternating user / assistant turns, ending with the user (or with an
assistant turn that the reply continues). It is rendered by the tokenizer's
`render_chat(messages, add_generation_prompt)`: the built-in template for byte-level `lm`
models (token ids), or the imported model's own Jinja template (text, then encoded). The
reply ends at the template's end-of-turn token (`<end_of_turn>`, or the tokenizer's eos),
a stop sequence, or max_tokens.

One model serves every request: a request's `model` field (required by Anthropic's SDKs)
must be a string if given, and is otherwise ignored; replies name the model that wrote them
(`Chat.model_name`, the workdir's name), not what the request asked for.
"""

import dataclasses
import math
import os
import uuid
from typing import Any, Callable, Iterator, Sequence

from lm.infer import constrain
from lm.infer import tool_stream
from lm.infer import tools as tools_lib
from lm.infer.sampling import SamplingParams

STOP_REASONS = ("end_turn", "max_tokens", "stop_sequence", "tool_use")
_REQUEST_FIELDS = {"model", "messages", "max_tokens", "system", "temperature", "top_k", "top_p",
                   "stop_sequences", "stream", "metadata", "tools", "tool_choice", "retrieval"}
_UNSUPPORTED_FIELDS = {"thinking", "container", "mcp_servers"}
_COUNT_FIELDS = {"model", "messages", "system", "tools", "tool_choice", "retrieval"}


class RequestError(ValueError):
  """A request that cannot be served; `status` and `type` follow the Messages API's errors."""

  def __init__(self, message: str, status: int = 400, error_type: str = "invalid_request_error"):
    super().__init__(message)
    self.status = status
    self.type = error_type

  def to_dict(self) -> dict:
    return {"type": "error", "error": {"type": self.type, "message": str(self)}}


# -- Response objects ---------------------------------------------------------------------------

@dataclasses.dataclass(kw_only=True)
class TextBlock:
  type: str = "text"
  text: str


@dataclasses.dataclass(kw_only=True)
class ToolUseBlock:
  type: str = "tool_use"
  id: str
  name: str
  input: dict


@dataclasses.dataclass
class Usage:
  input_tokens: int
  output_tokens: int


@dataclasses.dataclass(kw_only=True)
class Message:
  id: str
  type: str = "message"
  role: str = "assistant"
  content: list[TextBlock | ToolUseBlock]
  model: str
  stop_reason: str | None
  stop_sequence: str | None = None
  usage: Usage
  retrieval: dict | None = None  # not in the Messages API: the passages given and cited

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    if out["retrieval"] is None:
      del out["retrieval"]
    return out


# -- Requests -----------------------------------------------------------------------------------

@dataclasses.dataclass
class ChatRequest:
  messages: list[dict]      # [{"role": "user" | "assistant", "content": str}], validated;
                            # "tool_calls" / "tool_results" lists where it had such blocks
  max_tokens: int
  system: str | None = None
  sampling: SamplingParams = SamplingParams()
  stop_sequences: list[str] = dataclasses.field(default_factory=list)
  stream: bool = False
  model: str | None = None  # as the request gave it; ignored (one model serves every request)
  tools: list[tools_lib.Tool] = dataclasses.field(default_factory=list)
  tool_choice: tools_lib.ToolChoice = tools_lib.ToolChoice()
  retrieval: int = 0        # passages to retrieve into the system prompt (0: none)
  passages: list = dataclasses.field(default_factory=list)  # retrieved, set by Chat.prompt


def _blocks(content: Any, role: str, where: str) -> dict:
  """A message's content (a string, or text / tool_use / tool_result blocks) as
  {"content": its text, "tool_calls": [...], "tool_results": [...]} (lists only if any)."""
  if not isinstance(content, list):
    return {"content": _text(content, where)}
  kinds = {"user": ("text", "tool_result"), "assistant": ("text", "tool_use")}[role]
  text, calls, results = [], [], []
  for i, block in enumerate(content):
    kind = block.get("type") if isinstance(block, dict) else None
    if kind not in kinds:
      raise RequestError(f"{where}.{i}: {role} blocks are {' or '.join(kinds)}, not {kind!r}")
    if kind == "text":
      text.append(_text([block], where))
    elif kind == "tool_use":
      if not (isinstance(block.get("id"), str) and isinstance(block.get("name"), str)
              and isinstance(block.get("input"), dict)):
        raise RequestError(f"{where}.{i}: a tool_use block needs 'id', 'name' and an object "
                           "'input'")
      calls.append({"id": block["id"], "name": block["name"], "input": block["input"]})
    else:
      if not isinstance(block.get("tool_use_id"), str):
        raise RequestError(f"{where}.{i}.tool_use_id: required (a string)")
      is_error = block.get("is_error", False)
      if not isinstance(is_error, bool):
        raise RequestError(f"{where}.{i}.is_error: must be true or false")
      results.append({"tool_use_id": block["tool_use_id"], "is_error": is_error,
                      "content": _text(block.get("content", ""), f"{where}.{i}.content")})
  out = {"content": "".join(text)}
  if calls:
    out["tool_calls"] = calls
  if results:
    out["tool_results"] = results
  return out


def _check_results(messages: list[dict]) -> None:
  """Every tool_result answers a tool_use of the assistant turn just before it."""
  for i, message in enumerate(messages):
    if not message.get("tool_results"):
      continue
    calls = {c["id"]: c["name"] for c in messages[i - 1].get("tool_calls", [])} if i else {}
    for result in message["tool_results"]:
      if result["tool_use_id"] not in calls:
        raise RequestError(f"messages.{i}: tool_result {result['tool_use_id']!r} answers no "
                           "tool_use block of the previous assistant message")
      result["name"] = calls[result["tool_use_id"]]


def _text(content: Any, where: str) -> str:
  """A string, or a list of {"type": "text", "text": ...} blocks joined."""
  if isinstance(content, str):
    return content
  if isinstance(content, list):
    parts = []
    for i, block in enumerate(content):
      if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(
          block.get("text"), str):
        raise RequestError(f"{where}.{i}: only text blocks ({{'type': 'text', 'text': ...}}) "
                           "are supported")
      parts.append(block["text"])
    return "".join(parts)
  raise RequestError(f"{where}: content must be a string or a list of text blocks")


def _number(body: dict, name: str, kind: type, low: float, high: float | None = None):
  value = body.get(name)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
    raise RequestError(f"{name}: must be {'a number' if kind is float else 'an integer'}")
  if kind is float:
    try:
      value = float(value)
    except OverflowError:
      raise RequestError(f"{name}: too large for a float") from None
    if not math.isfinite(value):
      raise RequestError(f"{name}: {value} is not a finite number")
  if value < low or (high is not None and value > high):
    raise RequestError(f"{name}: {value} is outside [{low}, {high if high is not None else 'inf'}]")
  return kind(value)


def parse_request(body: Any, max_tokens_limit: int | None = None,
                  count_only: bool = False) -> ChatRequest:
  """A validated ChatRequest from a Messages API request body; RequestError names the field.
  `count_only` (POST /v1/messages/count_tokens): max_tokens is not needed (0 when absent),
  and the generation settings are not permitted."""
  if not isinstance(body, dict):
    raise RequestError("the request body must be a JSON object")
  unsupported = sorted(_UNSUPPORTED_FIELDS & set(body))
  if unsupported:
    raise RequestError(f"{', '.join(unsupported)}: not supported by this server")
  fields = _COUNT_FIELDS if count_only else _REQUEST_FIELDS
  unknown = sorted(set(body) - fields)
  if unknown:
    raise RequestError(f"{', '.join(unknown)}: extra inputs are not permitted")
  if "max_tokens" not in body and not count_only:
    raise RequestError("max_tokens: field required")
  max_tokens = _number(body, "max_tokens", int, 1, max_tokens_limit) or 0
  messages = body.get("messages")
  if not isinstance(messages, list) or not messages:
    raise RequestError("messages: a non-empty list of {'role', 'content'} is required")
  clean = []
  for i, message in enumerate(messages):
    if (not isinstance(message, dict) or set(message) - {"role", "content"}
        or "content" not in message):
      raise RequestError(f"messages.{i}: must be an object with exactly 'role' and 'content'")
    role = message.get("role")
    if role not in ("user", "assistant"):
      raise RequestError(f"messages.{i}.role: {role!r} must be 'user' or 'assistant' (the "
                         "system prompt goes in the top-level 'system' field)")
    expected = "user" if i % 2 == 0 else "assistant"
    if role != expected:
      raise RequestError(f"messages.{i}.role: roles must alternate, starting with 'user'; "
                         f"expected {expected!r}")
    clean.append({"role": role, **_blocks(message["content"], role, f"messages.{i}.content")})
  _check_results(clean)
  try:
    tools = tools_lib.parse_tools(body.get("tools", []))
    tool_choice = tools_lib.parse_tool_choice(body.get("tool_choice"), tools)
  except tools_lib.ToolError as e:
    raise RequestError(str(e)) from None
  system = body.get("system")
  if system is not None:
    system = _text(system, "system")
  temperature = _number(body, "temperature", float, 0.0)
  top_k = _number(body, "top_k", int, 0, 2**31 - 1)  # int32 on the device
  top_p = _number(body, "top_p", float, 0.0, 1.0)
  if top_p == 0.0:
    raise RequestError("top_p: must be above 0")
  stops = body.get("stop_sequences") or []
  if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
    raise RequestError("stop_sequences: must be a list of non-empty strings")
  stream = body.get("stream", False)
  if not isinstance(stream, bool):
    raise RequestError("stream: must be true or false")
  model = body.get("model")
  if model is not None and not isinstance(model, str):
    raise RequestError("model: must be a string")
  try:
    sampling = SamplingParams(temperature=1.0 if temperature is None else temperature,
                              top_k=top_k or 0, top_p=1.0 if top_p is None else top_p)
  except ValueError as e:  # the message names the field
    raise RequestError(str(e)) from None
  return ChatRequest(messages=clean, max_tokens=max_tokens, system=system or None,
                     sampling=sampling, stop_sequences=list(stops), stream=stream, model=model,
                     tools=tools, tool_choice=tool_choice,
                     retrieval=_retrieval(body.get("retrieval")))


def _retrieval(value: Any) -> int:
  """The "retrieval" field (not in the Messages API): true (3 passages), false, or
  {"top_k": k}."""
  if value is None or value is False:
    return 0
  if value is True:
    return 3
  if isinstance(value, dict) and set(value) <= {"top_k"}:
    return _number(value, "top_k", int, 1, 50) or 3
  raise RequestError("retrieval: must be true, false or {'top_k': k}")


# -- Prompts ------------------------------------------------------------------------------------

def render(tokenizer: Any, messages: Sequence[dict], system: str | None = None,
           tools: Sequence[tools_lib.Tool] = ()) -> list[int]:
  """Prompt token ids for the reply to `messages`. A final assistant message is a prefix the
  reply continues: the turns before it are rendered with the generation prompt, then its
  text follows. Tools, tool calls and results are rendered as lm/infer/tools.py says: given
  to a template that takes `tools`, otherwise described in the system prompt."""
  hf_tools = bool(tools) and tools_lib.takes_tools(tokenizer)
  if tools and not hf_tools:
    system = (system + "\n\n" if system else "") + tools_lib.describe(tools)
  turns = tools_lib.template_turns(messages, tools, hf_tools)
  turns = ([{"role": "system", "content": system}] if system else []) + turns
  prefix = ""
  if turns and turns[-1]["role"] == "assistant":
    prefix = turns.pop()["content"]
  extra = {"tools": tools_lib.hf_tools(tools)} if hf_tools else {}
  rendered = tokenizer.render_chat(turns, add_generation_prompt=True, **extra)
  ids = tokenizer.encode(rendered) if isinstance(rendered, str) else rendered
  ids = [int(t) for t in ids]
  if prefix:
    ids += [int(t) for t in tokenizer.encode(prefix)]
  return ids


def stop_token_ids(tokenizer: Any) -> list[int]:
  """Tokens that end a reply: the template's end of turn (byte tokenizer) and eos."""
  ids = [getattr(tokenizer, "eos_id", None)]
  ids.append(getattr(tokenizer, "special_ids", {}).get("<end_of_turn>"))
  return [i for i in ids if i is not None]


def new_id() -> str:
  return "msg_" + uuid.uuid4().hex[:24]


def reply_blocks(completion: Any, request: "ChatRequest", form: tools_lib.CallFormat
                 ) -> tuple[str, list[ToolUseBlock], str | None]:
  """(the reply's text, its tool_use blocks, its stop_reason): a reply that made calls
  stops for "tool_use" (unless max_tokens cut it: then its complete calls are kept)."""
  if not request.tools or request.tool_choice.type == "none":
    return completion.text, [], completion.stop_reason
  text, calls = tools_lib.split_calls(completion.text, form)
  blocks = [ToolUseBlock(id=tools_lib.new_id(), name=c["name"], input=c["input"]) for c in calls]
  reason = completion.stop_reason
  if blocks and reason == "end_turn":
    reason = "tool_use"
  return text, blocks, reason


def to_message(completion: Any, model: str, message_id: str | None = None,
               request: "ChatRequest | None" = None,
               form: tools_lib.CallFormat = tools_lib.DEFAULT_FORMAT) -> Message:
  """The Message for an engine Completion (of `request`, when it may call tools)."""
  text, calls, reason = (completion.text, [], completion.stop_reason) if request is None else \
      reply_blocks(completion, request, form)
  content = ([TextBlock(text=text)] if text or not calls else []) + calls
  return Message(id=message_id or new_id(), content=content,
                 model=model, stop_reason=reason,
                 stop_sequence=completion.stop_sequence,
                 usage=Usage(input_tokens=completion.prompt_tokens,
                             output_tokens=len(completion.tokens)))


class TextDeltas:
  """Turns successive snapshots of a growing completion into text deltas that are never taken
  back: text that could still become a stop sequence, or an unfinished UTF-8 character, is
  held until the completion is final."""

  def __init__(self, stop_sequences: Sequence[str]):
    self.hold = max((len(s) for s in stop_sequences), default=1) - 1
    self.sent = ""

  def update(self, text: str, final: bool) -> str:
    if not final:
      text = text.rstrip("\ufffd")
      text = text[:len(text) - self.hold] if self.hold else text
    if not text.startswith(self.sent):  # the decoder revised earlier text; never resend
      return ""
    delta, self.sent = text[len(self.sent):], text
    return delta


def stream_events(snapshots: Iterator[Any], request: ChatRequest, model: str,
                  prompt_tokens: int, form: tools_lib.CallFormat = tools_lib.DEFAULT_FORMAT
                  ) -> Iterator[dict]:
  """Messages API stream events (message_start ... message_stop) from successive completion
  snapshots of one request (the last one final). Text streams as it comes, up to a tool
  call's opening; then each tool_use block streams while the model writes its input
  (lm/infer/tool_stream.py)."""
  message_id = new_id()
  yield {"type": "message_start", "message": {
      "id": message_id, "type": "message", "role": "assistant", "content": [], "model": model,
      "stop_reason": None, "stop_sequence": None,
      "usage": {"input_tokens": prompt_tokens, "output_tokens": 0}}}
  calling = bool(request.tools) and request.tool_choice.type != "none"
  calls = tool_stream.CallStream(form, request.stop_sequences) if calling else None
  deltas = TextDeltas(request.stop_sequences + ([form.open] if calling else []))
  text_block = None  # None: not started; True: open; False: closed before the calls
  completion = None
  for completion in snapshots:
    final = completion.stop_reason is not None
    in_calls = calling and calls.started(completion.text)
    text = tools_lib.visible_text(completion.text, form) if calling else completion.text
    delta = deltas.update(text, final or in_calls)  # the text before a call is complete
    if delta and text_block is None:
      text_block = True
      yield {"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}
    if delta:
      yield {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": delta}}
    if in_calls:
      if text_block:
        text_block, calls.index = False, 1
        yield {"type": "content_block_stop", "index": 0}
      yield from calls.update(completion.text, final)
  if text_block is None and not (calls and calls.index):  # no block at all: an empty text one
    text_block = True
    yield {"type": "content_block_start", "index": 0,
           "content_block": {"type": "text", "text": ""}}
  if text_block:
    yield {"type": "content_block_stop", "index": 0}
  reason = completion.stop_reason
  if calls and calls.calls and reason == "end_turn":
    reason = "tool_use"
  delta = {"type": "message_delta",
           "delta": {"stop_reason": reason, "stop_sequence": completion.stop_sequence},
           "usage": {"output_tokens": len(completion.tokens)}}
  if request.retrieval:
    delta["retrieval"] = Chat.citations(completion.text, request)
  yield delta
  yield {"type": "message_stop"}


def random_seed() -> int:
  return int.from_bytes(os.urandom(4), "little")


# -- The client ---------------------------------------------------------------------------------

class Chat:
  """One engine serving chat requests: prompt rendering, limits, and the engine call."""

  def __init__(self, engine: Any, model_name: str | None = None, index: Any = None):
    self.engine = engine
    self.index = index  # lm.infer.retrieval.Index: the documents requests may retrieve from
    self.tokenizer = engine.tokenizer
    self.model_name = model_name or getattr(engine, "name", "lm")
    self.stop_ids = stop_token_ids(self.tokenizer)
    self.call_format = tools_lib.call_format(self.tokenizer)

  def prompt(self, request: ChatRequest) -> list[int]:
    """The prompt's token ids; RequestError when it and max_tokens exceed the context."""
    system = request.system
    if request.retrieval:
      system = self._ground(request)
    ids = render(self.tokenizer, request.messages, system, request.tools)
    limit = self.engine.config.max_seq_len
    if len(ids) + request.max_tokens > limit:
      raise RequestError(f"prompt is too long: {len(ids)} tokens + max_tokens "
                         f"{request.max_tokens} > {limit}, the model's context (max_seq_len)")
    return ids

  def snapshots(self, requests: Sequence[ChatRequest], prompts: Sequence[list[int]],
                seeds: Sequence[int] | None = None, chunk_tokens: int | None = 16,
                cancelled: Callable[[], Sequence[bool]] | None = None) -> Iterator[list[Any]]:
    """Completion snapshots of a batch of requests, as `Engine.stream` yields them
    (`cancelled` as there: the requests to stop)."""
    seeds = list(seeds) if seeds is not None else [random_seed() for _ in requests]
    return self.engine.stream(
        list(prompts), max_new_tokens=[r.max_tokens for r in requests],
        sampling=[r.sampling for r in requests], seed=seeds, stop_token_ids=self.stop_ids,
        stop_strings=[r.stop_sequences for r in requests], chunk_tokens=chunk_tokens,
        cancelled=cancelled, constraints=[self.constraint(r) for r in requests])

  def _ground(self, request: ChatRequest) -> str:
    """The system prompt with the passages retrieved for the last user turn (kept on the
    request, for its citations)."""
    from lm.infer import retrieval  # pylint: disable=import-outside-toplevel
    if self.index is None:
      raise RequestError("retrieval: this server has no documents (lm serve --docs=DIR)")
    query = next(m["content"] for m in reversed(request.messages) if m["role"] == "user")
    request.passages = self.index.search(query, request.retrieval)
    return retrieval.grounded_system(request.passages, request.system)

  def constraint(self, request: ChatRequest) -> constrain.Constraint | None:
    """The grammar the request's reply is decoded under (tool calls), or None."""
    grammar = tools_lib.grammar(request.tools, request.tool_choice, self.call_format)
    if grammar is None:
      return None
    return constrain.Constraint(grammar, constrain.vocabulary(self.tokenizer, self.stop_ids))

  def message(self, completion: Any, request: ChatRequest) -> Message:
    message = to_message(completion, self.model_name, request=request, form=self.call_format)
    if request.retrieval:
      message.retrieval = self.citations(completion.text, request)
    return message

  @staticmethod
  def citations(text: str, request: ChatRequest) -> dict:
    from lm.infer import retrieval  # pylint: disable=import-outside-toplevel
    return retrieval.describe(request.passages, retrieval.cited(text, request.passages))

  def events(self, snapshots: Iterator[Any], request: ChatRequest,
             prompt_tokens: int) -> Iterator[dict]:
    return stream_events(snapshots, request, self.model_name, prompt_tokens, self.call_format)


class Messages:
  def __init__(self, chat: Chat):
    self._chat = chat

  def create(self, *, max_tokens: int, messages: list[dict], system: str | list | None = None,
             temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, stop_sequences: list[str] | None = None,
             stream: bool = False, model: str | None = None, metadata: dict | None = None,
             tools: list[dict] | None = None, tool_choice: dict | None = None,
             retrieval: bool | dict | None = None, seed: int | None = None):
    """A Message replying to `messages`; with stream=True, an iterator of the stream's
    event dicts instead. `seed` (not in the Messages API) makes sampling repeatable."""
    body = {k: v for k, v in dict(max_tokens=max_tokens, messages=messages, system=system,
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  stop_sequences=stop_sequences, stream=stream, model=model,
                                  metadata=metadata, tools=tools, tool_choice=tool_choice,
                                  retrieval=retrieval).items() if v is not None}
    request = parse_request(body)
    prompt = self._chat.prompt(request)
    seeds = None if seed is None else [seed]
    if stream:
      snapshots = (s[0] for s in self._chat.snapshots([request], [prompt], seeds))
      return self._chat.events(snapshots, request, len(prompt))
    *_, final = self._chat.snapshots([request], [prompt], seeds, chunk_tokens=None)
    return self._chat.message(final[0], request)

  def count_tokens(self, *, messages: list[dict], system: str | list | None = None,
                   tools: list[dict] | None = None, tool_choice: dict | None = None,
                   model: str | None = None, retrieval: bool | dict | None = None) -> dict:
    """{"input_tokens": n}: the prompt tokens `create` with these fields would use."""
    body = {k: v for k, v in dict(messages=messages, system=system, tools=tools,
                                  tool_choice=tool_choice, model=model,
                                  retrieval=retrieval).items() if v is not None}
    return {"input_tokens": len(self._chat.prompt(parse_request(body, count_only=True)))}


class Client:
  """A local stand-in for the Messages API client: `Client(workdir).messages.create(...)`."""

  def __init__(self, workdir: str | None = None, engine: Any = None, mesh: Any = None,
               index: Any = None):
    if (workdir is None) == (engine is None):
      raise ValueError("Client needs a workdir or an engine (exactly one)")
    if engine is None:
      from lm.infer.engine import Engine  # pylint: disable=import-outside-toplevel
      engine = Engine.from_workdir(workdir, mesh=mesh)
    self.chat = Chat(engine, index=index)
    self.messages = Messages(self.chat)


def interactive(client: Client, system: str | None = None, max_tokens: int = 200,
                temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                input_fn=input, output=None, retrieval_k: int = 3) -> list[dict]:
  """`lm chat`: one line per user turn, the reply streamed as it is generated. `/reset`
  forgets the conversation, `/exit` (or end of input) quits. The oldest turns are dropped
  when the conversation outgrows the model's context. With documents (Client(index=...),
  `lm chat --docs=DIR`), each turn retrieves `retrieval_k` passages into the system prompt
  and the sources the reply cites are listed under it. Returns the conversation."""
  import sys  # pylint: disable=import-outside-toplevel
  output = output or sys.stdout
  interactive_tty = sys.stdin.isatty() and input_fn is input
  chat = client.chat
  max_tokens = min(max_tokens, chat.engine.config.max_seq_len - 1)
  history: list[dict] = []
  turn = 0
  while True:
    try:
      line = input_fn("you> " if interactive_tty else "")
    except EOFError:
      break
    if line.strip() == "/exit":
      break
    if line.strip() == "/reset":
      history = []
      continue
    if not line.strip():
      continue
    history.append({"role": "user", "content": line})
    request = ChatRequest(messages=history, max_tokens=max_tokens, system=system,
                          sampling=SamplingParams(temperature, top_k, top_p),
                          retrieval=retrieval_k if chat.index is not None else 0)
    while True:
      try:
        prompt = chat.prompt(request)
        break
      except RequestError:
        if len(history) <= 1:
          raise
        history = history[2:]  # drop the oldest user / assistant pair
        request.messages = history
    output.write("assistant> ")
    deltas, final = TextDeltas(request.stop_sequences), None
    for snapshots in chat.snapshots([request], [prompt], seeds=[seed + turn]):
      final = snapshots[0]
      output.write(deltas.update(final.text, final.stop_reason is not None))
      output.flush()
    output.write("\n")
    if request.retrieval:
      for n in Chat.citations(final.text, request)["cited"]:
        passage = request.passages[n - 1]
        output.write(f"  [{n}] {passage.source} (word {passage.start})\n")
    output.flush()
    history.append({"role": "assistant", "content": final.text})
    turn += 1
  return history
