"""The `cai` config section and the pipeline's config: one file (configs/cai/*.py) holds the
settings of the data commands (`cai`) and a full training config per training step.

    config = pipeline_config()
    config.cai.policy = "runs/helpful"     # the helpful model every step starts from
    config.sft.train.steps = 200           # any lm train field of a step
    --config.cai.revisions=2 --config.dpo.dpo.beta=0.2 on the command line
"""

import ml_collections

from lm import config as config_lib

STEPS = ("helpful", "critique", "sft", "label", "preference_model", "rl", "dpo", "evaluate")
TRAIN_STEPS = {"helpful": "sft", "sft": "sft", "preference_model": "reward", "rl": "grpo",
               "dpo": "dpo"}


def cai_section() -> ml_collections.ConfigDict:
  cai = ml_collections.ConfigDict()
  cai.constitution = "default"       # a built-in constitution's name or a JSON file
  # The helpful model: an lm workdir (a fetched or trained model); "" with cai.world: the
  # pipeline trains the synthetic world's helpful-only model first (step "helpful").
  cai.policy = ""
  cai.feedback_model = ""            # who answers the comparisons; "": cai.policy
  # Red-team prompts: "world" (the synthetic world's), or a JSONL file of {"prompt": str |
  # [messages]} records; cai.num_prompts of them feed critique and label each.
  cai.prompts = "world"
  cai.num_prompts = 256
  cai.label_prompts = 0              # label: other prompts after the critique ones; 0: reuse
  # Helpfulness records mixed into SL-CAI's SFT (and the world's helpful-only model):
  # "world", or a data.source of chat records (builtin:tasks, jsonl:...).
  cai.helpful_data = "world"
  cai.helpful_ratio = 1.0            # helpfulness records per revision record
  cai.world = True                   # the synthetic world (rule judge); False: a real model
  cai.world_records = 24000          # the helpful-only model's training records
  # The rules its critique -> revision and comparison records are taught on: "same" (the
  # evaluated rules, on training prompts), or "other" (rules of the evaluated ones' shapes,
  # other instances: world.TAUGHT_*; at 0.14M parameters the skill did not carry over
  # cleanly: experiments/constitutional/README.md)
  cai.world_taught = "same"
  cai.eval_red_team = 300            # held-out prompts scored at the end
  cai.eval_benign = 200
  cai.eval_max_new_tokens = 32
  # A real model's held-out prompts (cai.world=False): comma-separated JSONL files of rubric
  # records (lm/constitutional/rubric.py: {"category", "prompt", "markers" | "answers"}).
  cai.eval_prompts = ""
  # critique
  cai.revisions = 4                  # rounds of critique -> revision
  cai.few_shot = -1                  # demonstrations before each round; -1: all
  cai.max_new_tokens = 128
  cai.temperature = 1.0
  cai.top_p = 1.0
  cai.batch_size = 64
  cai.seed = 0
  # label
  cai.ensemble = 1                   # principles per pair, their labels averaged
  cai.both_orders = True             # each comparison shown as (a, b) and (b, a), averaged:
                                     # a label free of the feedback model's position bias
  cai.chain_of_thought = False
  cai.clamp_low = 0.4                # chain-of-thought labels are clamped to this band
  cai.clamp_high = 0.6
  cai.cot_tokens = 64
  # Helpfulness preferences mixed into the preference model's and DPO's pairs: "world" (the
  # synthetic world's), a data.source of pairs (builtin:preferences, jsonl:...), "": none;
  # cai.helpful_pairs_ratio of them per AI-labelled pair.
  cai.helpful_preferences = ""
  cai.helpful_pairs_ratio = 1.0
  cai.dpo_min_confidence = 0.5       # DPO keeps pairs whose label is at least this sure
  # pipeline
  cai.skip = ""                      # steps to skip, comma-separated (of STEPS)
  return cai


def train_config(stage: str) -> ml_collections.ConfigDict:
  """A training step's config: lm's base config for `stage`; the pipeline fills init_from
  and data.source."""
  config = config_lib.base_config()
  config.stage = stage
  config.data.source = "jsonl:"
  config.data.eval_documents = 0
  config.train.log_every = 10
  return config


def pipeline_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.cai = cai_section()
  for step, stage in TRAIN_STEPS.items():
    config[step] = train_config(stage)
  return config


def skipped(config: ml_collections.ConfigDict) -> set[str]:
  names = {s.strip() for s in config.cai.skip.split(",") if s.strip()}
  unknown = sorted(names - set(STEPS))
  if unknown:
    raise ValueError(f"cai.skip={config.cai.skip!r}: unknown step {unknown[0]!r}; the steps "
                     f"are {', '.join(STEPS)}")
  return names


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails before anything runs, naming each cai field that cannot work."""
  cai = config.cai
  errors = []
  for name in ("revisions", "num_prompts", "batch_size", "max_new_tokens", "ensemble",
               "cot_tokens"):
    if cai[name] <= 0:
      errors.append(f"cai.{name}={cai[name]} must be positive")
  if not 0 <= cai.clamp_low <= cai.clamp_high <= 1:
    errors.append(f"cai.clamp_low={cai.clamp_low}, cai.clamp_high={cai.clamp_high}: need "
                  "0 <= low <= high <= 1")
  if cai.helpful_ratio < 0:
    errors.append(f"cai.helpful_ratio={cai.helpful_ratio} must be >= 0")
  if cai.temperature < 0:
    errors.append(f"cai.temperature={cai.temperature} must be >= 0")
  if not 0.5 <= cai.dpo_min_confidence <= 1:
    errors.append(f"cai.dpo_min_confidence={cai.dpo_min_confidence} must be in [0.5, 1]")
  if not cai.policy and not cai.world:
    errors.append("cai.policy is empty: name the helpful model's workdir (only the synthetic "
                  "world, cai.world=True, trains its own)")
  if (cai.prompts == "world" or cai.helpful_data == "world") and not cai.world:
    errors.append("cai.prompts / cai.helpful_data = 'world' need cai.world=True")
  try:
    skipped(config)
  except ValueError as e:
    errors.append(str(e))
  if errors:
    raise ValueError("Invalid config: " + "; ".join(errors))
