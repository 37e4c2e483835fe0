"""Tool use in the Messages API: tool definitions, their rendering, the grammar of a call.

A request's `tools` ({"name", "description", "input_schema"}) and `tool_choice` ({"type":
"auto" | "any" | "tool" | "none", "name", "disable_parallel_tool_use"}) are validated
here. The assistant calls a tool by writing, in its reply,

    <tool_call>{"name":"get_weather","input":{"city":"Paris"}}</tool_call>

(the default format, for the byte / SentencePiece templates and Hugging Face templates
that take no `tools`: the tools are described in the system prompt, see `TOOLS_PROMPT`; a
past call is rendered in that form in its assistant turn, and a `tool_result` block in the
next user turn as `<tool_result>CONTENT</tool_result>`). A Hugging Face template that reads
a `tools` variable gets the tools, `tool_calls` on assistant messages and `tool` messages
instead, as transformers passes them; its calls are parsed in the Hermes / Qwen form
(`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`).

The reply is decoded under a grammar (lm/infer/constrain.py): with tool_choice "auto",
free text, optionally followed by calls; with "any" or "tool", calls only. Each call's JSON
is `{"name": one of the tools, <arguments key>: an object valid under that tool's
input_schema}`, so every call that completes parses and validates. ("none": no grammar,
the reply is text.)
"""

import dataclasses
import json
import re
import uuid
from typing import Any, Sequence

from lm.infer import constrain

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
TOOLS_PROMPT = ('Call a tool: <tool_call>{"name": NAME, "input": INPUT}</tool_call>. Results '
                "come as <tool_result>...</tool_result>. Tools:\n")


class ToolError(ValueError):
  """A request's tools or tool blocks are malformed (the message names the field)."""


@dataclasses.dataclass(frozen=True)
class Tool:
  name: str
  description: str
  input_schema: dict


@dataclasses.dataclass(frozen=True)
class ToolChoice:
  type: str = "auto"            # auto | any | tool | none
  name: str | None = None       # the tool, for type "tool"
  parallel: bool = True         # more than one call per reply


@dataclasses.dataclass(frozen=True)
class CallFormat:
  """How a call is written in the reply: open + JSON + close."""
  open: str = "<tool_call>"
  close: str = "</tool_call>"
  arguments: str = "input"      # the key of the arguments in the call's JSON


DEFAULT_FORMAT = CallFormat()
HERMES_FORMAT = CallFormat("<tool_call>\n", "\n</tool_call>", "arguments")


def parse_tools(value: Any) -> list[Tool]:
  if not isinstance(value, list):
    raise ToolError("tools: must be a list of {'name', 'description', 'input_schema'}")
  tools, names = [], set()
  for i, tool in enumerate(value):
    where = f"tools.{i}"
    if not isinstance(tool, dict):
      raise ToolError(f"{where}: must be an object")
    unknown = sorted(set(tool) - {"name", "description", "input_schema", "type",
                                  "cache_control"})
    if unknown:
      raise ToolError(f"{where}: {', '.join(unknown)}: extra inputs are not permitted")
    if tool.get("type") not in (None, "custom"):
      raise ToolError(f"{where}.type: {tool['type']!r}: only custom (client) tools are supported")
    name = tool.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
      raise ToolError(f"{where}.name: must match {_NAME.pattern}")
    if name in names:
      raise ToolError(f"{where}.name: {name!r} is defined twice")
    names.add(name)
    description = tool.get("description", "")
    if not isinstance(description, str):
      raise ToolError(f"{where}.description: must be a string")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
      raise ToolError(f"{where}.input_schema: must be a JSON schema object with "
                      "'type': 'object'")
    try:
      constrain.lark(constrain.lark_json(schema))
      constrain.json_grammar(schema)
    except (TypeError, ValueError) as e:
      raise ToolError(f"{where}.input_schema: {e}") from None
    tools.append(Tool(name, description, schema))
  return tools


def parse_tool_choice(value: Any, tools: Sequence[Tool]) -> ToolChoice:
  if value is None:
    return ToolChoice()
  if not isinstance(value, dict) or value.get("type") not in ("auto", "any", "tool", "none"):
    raise ToolError("tool_choice: must be {'type': 'auto' | 'any' | 'tool' | 'none'}")
  unknown = sorted(set(value) - {"type", "name", "disable_parallel_tool_use"})
  if unknown:
    raise ToolError(f"tool_choice: {', '.join(unknown)}: extra inputs are not permitted")
  kind, name = value["type"], value.get("name")
  if kind == "tool":
    if name not in {t.name for t in tools}:
      raise ToolError(f"tool_choice.name: {name!r} is not one of the request's tools")
  elif name is not None:
    raise ToolError(f"tool_choice.name: only for type 'tool', not {kind!r}")
  if kind in ("any", "tool") and not tools:
    raise ToolError(f"tool_choice: type {kind!r} needs tools")
  disable = value.get("disable_parallel_tool_use", False)
  if not isinstance(disable, bool):
    raise ToolError("tool_choice.disable_parallel_tool_use: must be true or false")
  return ToolChoice(kind, name, not disable)


def new_id() -> str:
  return "toolu_" + uuid.uuid4().hex[:24]


# -- Rendering ----------------------------------------------------------------------------------

def takes_tools(tokenizer: Any) -> bool:
  """Whether the tokenizer's chat template reads a `tools` variable (Hugging Face only)."""
  template = getattr(tokenizer, "chat_template", None) or ""
  return bool(re.search(r"\btools\b", template))


def call_format(tokenizer: Any) -> CallFormat:
  if takes_tools(tokenizer) and "<tool_call>" in tokenizer.chat_template:
    return HERMES_FORMAT
  return DEFAULT_FORMAT


def describe(tools: Sequence[Tool]) -> str:
  """The tools as the default format's system prompt lists them, one JSON line each."""
  return TOOLS_PROMPT + "\n".join(
      json.dumps({"name": t.name, "description": t.description, "input_schema": t.input_schema},
                 separators=(",", ":"), ensure_ascii=False)
      for t in tools)


def write_call(name: str, arguments: dict, form: CallFormat) -> str:
  """A call as the grammar makes the model write it (compact JSON)."""
  body = json.dumps({"name": name, form.arguments: arguments}, separators=(",", ":"),
                    ensure_ascii=False)
  return form.open + body + form.close


def result_text(content: str, is_error: bool) -> str:
  return ("<tool_result is_error=\"true\">" if is_error else "<tool_result>") + content + \
      "</tool_result>"


def template_turns(messages: Sequence[dict], tools: Sequence[Tool], hf_tools: bool
                   ) -> list[dict]:
  """Messages (each {"role", "content": str, and "tool_calls" / "tool_results" lists where
  the request had such blocks}) as the chat template reads them: with `hf_tools`, in
  transformers' shape (assistant `tool_calls`, `tool` messages); otherwise calls and results
  written into the text in the default format."""
  out = []
  for message in messages:
    calls, results = message.get("tool_calls", []), message.get("tool_results", [])
    if hf_tools:
      for result in results:
        out.append({"role": "tool", "content": result["content"],
                    "tool_call_id": result["tool_use_id"], "name": result.get("name")})
      turn = {"role": message["role"], "content": message["content"]}
      if calls:
        turn["tool_calls"] = [{"id": c["id"], "type": "function",
                               "function": {"name": c["name"], "arguments": c["input"]}}
                              for c in calls]
      if turn["content"] or calls or not results:
        out.append(turn)
      continue
    text = "".join(result_text(r["content"], r.get("is_error", False)) for r in results)
    text += message["content"]
    text += "".join(write_call(c["name"], c["input"], DEFAULT_FORMAT) for c in calls)
    out.append({"role": message["role"], "content": text})
  return out


def hf_tools(tools: Sequence[Tool]) -> list[dict]:
  """Tools in the shape Hugging Face chat templates read (OpenAI's function format)."""
  return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                            "parameters": t.input_schema}} for t in tools]


# -- The grammar and the calls ------------------------------------------------------------------

def _call_schema(tools: Sequence[Tool], form: CallFormat) -> dict:
  options = [{"type": "object", "properties": {"name": {"const": t.name},
                                               form.arguments: t.input_schema},
              "required": ["name", form.arguments], "additionalProperties": False}
             for t in tools]
  return options[0] if len(options) == 1 else {"anyOf": options}


def grammar(tools: Sequence[Tool], choice: ToolChoice, form: CallFormat) -> str | None:
  """The llguidance grammar of a reply under `choice`; None for "none" (free text)."""
  if choice.type == "none" or not tools:
    return None
  allowed = [t for t in tools if choice.type != "tool" or t.name == choice.name]
  rule = constrain.lark_json(_call_schema(allowed, form))
  opening, closing = json.dumps(form.open), json.dumps(form.close)
  more = f" ({opening} call {closing})*" if choice.parallel else ""
  lines = [f"calls: call {closing}{more}", f"call: {rule}"]
  if choice.type == "auto":
    lines = ["start: text_only | text_call", "text_only: /(.|\\n)*/",
             "text_call: text calls", f"text[suffix={opening}]: /(.|\\n)*/"] + lines
  else:
    lines = [f"start: {opening} calls"] + lines
  return constrain.lark("\n".join(lines) + "\n")


def visible_text(text: str, form: CallFormat) -> str:
  """The text before the first call (what a text block shows)."""
  position = text.find(form.open)
  return text if position < 0 else text[:position]


def split_calls(text: str, form: CallFormat) -> tuple[str, list[dict]]:
  """(text before the calls, the complete calls [{"name", "input"}]). A call cut short (by
  max_tokens) is left out."""
  head, *parts = text.split(form.open)
  calls = []
  for part in parts:
    if form.close not in part:
      break
    body = part[:part.index(form.close)]
    try:
      call = json.loads(body)
    except ValueError:
      break
    calls.append({"name": call["name"], "input": call[form.arguments]})
  return head.rstrip() if calls else head, calls
