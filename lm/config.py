"""The experiment config: a locked ml_collections ConfigDict with one section per module.

Files in configs/ start from `base_config()`, set what their experiment needs, and return
it locked, so `--config.train.lr=3e-4` works and `--config.train.lrr=3e-4` is an error.
Every ModelConfig field can be overridden on top of `model.preset`.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from lm.model import ModelConfig, lora, presets
from lm.model.config import model_config_fields
from lm.train import profile as profile_lib


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.stage = "pretrain"
  # Start from imported weights: "hf:DIR" (a Hugging Face model) or an lm workdir. The import
  # fixes model.* and data.tokenizer; explicit overrides must agree (dtype, remat may differ).
  config.init_from = ""

  # model: a preset plus optional per-field overrides (None keeps the preset's value).
  config.model = ml_collections.ConfigDict()
  config.model.preset = "tiny"
  for name, field_type in model_config_fields().items():
    config.model[name] = config_dict.placeholder(field_type)

  config.data = ml_collections.ConfigDict()
  # tfds:<name>[/<config>][:<version>] | text:<glob> | jsonl:<glob> | builtin:stdlib |
  # synthetic:markov (lm/data/sources.py)
  config.data.source = "builtin:stdlib"
  config.data.tokenizer = "byte"          # byte | spm:<file.model> | hf:<dir>
  config.data.text_field = "text"         # the feature (tfds:) or JSON key (jsonl:) to read
  # Record fields a stage reads (comma-separated): "" takes the stage's own (pretrain: the text
  # in data.text_field; sft: "messages", or "prompt,completion"). A record without one is an
  # error naming the file, the line and the field.
  config.data.fields = ""
  config.data.pack = True                 # sft: pack conversations into rows; False: pad
  config.data.truncate = "cut"            # sft: a conversation longer than a row: cut | drop
  config.data.cache_dir = "~/.cache/lm/data"  # local sources, prepared once as ArrayRecord
  config.data.tfds_data_dir = ""          # "": TFDS' default (~/tensorflow_datasets)
  config.data.tfds_download = True        # download and prepare a tfds: source on first use
  config.data.eval_every_nth = 20         # local sources: 1 in 20 documents is held out
  config.data.eval_documents = 1000       # evaluation scores the first this many held-out
                                          # documents, whole, on every topology; 0: all
  config.data.shards = 0                  # input streams the global batch is cut into;
                                          # 0: one per process (see lm/data/pipeline.py)
  config.data.shuffle_rows = 1024         # packed rows are shuffled in windows of this many
  config.data.num_threads = 0             # reader threads per stream (0: the prefetch thread
                                          # reads; more help tokenizers that release the GIL)
  config.data.num_workers = 0             # tokenizing processes per stream (0: in-process)
  config.data.prefetch = 4                # batches prepared ahead in a background thread

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1000
  config.train.batch_size = 32            # global, in sequences
  config.train.seq_len = 256
  config.train.grad_accum = 1             # micro-batches per step; batch_size must divide
  config.train.optimizer = "adamw"        # adamw | adafactor
  config.train.lr = 1e-3
  config.train.warmup_steps = 100
  config.train.min_lr_ratio = 0.1
  config.train.b1 = 0.9
  config.train.b2 = 0.95
  config.train.eps = 1e-8
  config.train.weight_decay = 0.1         # decoupled, x lr schedule; not norms or biases
  config.train.grad_clip = 1.0            # global-norm clipping; 0 disables
  config.train.z_loss = 0.0               # weight of log(Z)^2 (PaLM uses 1e-4)
  # A non-finite loss or gradient norm never updates the state (lm/train/guard.py); then:
  config.train.on_nonfinite = "skip"      # skip: go on with the next batch | stop: raise
  config.train.spike_sigma = 0.0          # skip an update whose loss > mean + sigma * std; 0: off
  config.train.spike_window = 100         # horizon of that mean and std, in applied updates;
                                          # the spike guard starts after this many
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 3
  # Resume from a checkpoint whose model differs in more than compute settings (dtype, remat)
  # while its arrays keep their shapes (e.g. another MLP or RoPE theta); off: refused.
  config.train.allow_model_change = False
  config.train.peak_flops = 0.0           # per device, for MFU; 0: the device kind's table
                                          # entry (a CPU: its matmul rate, measured)
  config.train.profile_steps = ""         # "10:15": JAX profiler trace of steps 10-14 in
                                          # workdir/profile (lm/train/profile.py); "": none

  # LoRA on any stage (lm/model/lora.py): adapters on the weights whose path matches `targets`
  # ("layers/attention/query", "layers/mlp/wo", "lm_head"); the base is frozen.
  config.lora = ml_collections.ConfigDict()
  config.lora.rank = 0                    # 0: off (every parameter trained)
  config.lora.alpha = 16.0                # the update is scaled by alpha / rank
  config.lora.dropout = 0.0               # on the adapters' input, in training
  config.lora.targets = lora.DEFAULT_TARGETS  # every attention and MLP projection
  config.lora.quantize = ""               # QLoRA: the frozen base as "nf4" or "int8" (blocks of
  config.lora.double_quant = False        # 64, lm/model/quant.py); also quantize the absmaxes

  # stage="ppo" (lm/stages/ppo.py): rollouts, sampling and rewards from the `rl` section (its
  # epsilon clips the ratio). Defaults follow TRL's PPOTrainer where it has the field.
  config.ppo = ml_collections.ConfigDict()
  config.ppo.value_model = "separate"     # separate: a decoder with a scalar head | shared: a
                                          # head on the policy's trunk (lm/model/heads.py)
  config.ppo.value_init = ""              # separate: the workdir of a stage="reward" run whose
                                          # model starts the value model; "": the policy's
  config.ppo.gamma = 1.0                  # discount over response tokens
  config.ppo.lam = 0.95                   # GAE's lambda
  config.ppo.kl_coef = 0.05               # per-token KL penalty in the reward (initial value)
  config.ppo.kl_target = 0.0              # > 0: adapt kl_coef towards this KL per response
                                          # (Ziegler et al.); 0: fixed kl_coef
  config.ppo.kl_horizon = 10000           # the adaptive controller's horizon, in rollouts
  config.ppo.kl_estimator = "k1"          # k1 | k3: the per-token KL in the penalty
  config.ppo.whiten_rewards = False       # scale the per-token rewards by their batch std
  config.ppo.value_clip = 0.2             # clip new values to old +- this (TRL: cliprange_value)
  config.ppo.vf_coef = 0.1                # weight of the value loss
  config.ppo.epochs = 4                   # passes over each batch of rollouts (TRL:
                                          # num_ppo_epochs)
  config.ppo.num_minibatches = 1          # updates per pass
  config.ppo.missing_eos_penalty = 0.0    # subtracted from the score of a response that did
                                          # not end its turn within rl.max_new_tokens

  # stage="dpo" (lm/stages/dpo.py): the reference is the starting model (init_from), frozen.
  config.dpo = ml_collections.ConfigDict()
  config.dpo.loss = "sigmoid"             # sigmoid | ipo | hinge
  config.dpo.beta = 0.1                   # strength of the pull towards the reference
  config.dpo.label_smoothing = 0.0        # sigmoid: the assumed fraction of flipped labels
  config.dpo.rpo_alpha = 0.0              # + alpha * NLL per token of the chosen reply (RPO)
  config.dpo.precompute_reference = False # the reference's log-probs of every pair computed
                                          # once before training (saved in the workdir): no
                                          # frozen copy of the model in memory

  # stage="reward" (lm/stages/reward.py): a scalar head on the decoder, Bradley-Terry loss.
  config.reward = ml_collections.ConfigDict()
  config.reward.center = 0.0              # weight of (r_chosen + r_rejected)^2: rewards near 0
  config.reward.read_at = "end_of_turn"   # the reply's token the head reads: its end-of-turn
                                          # token, or "reply_end": the token before it

  # RL stages (stage="grpo": lm/stages/grpo.py; reward functions: lm/rl/rewards.py). Defaults
  # follow TRL's GRPOTrainer (1.x) except beta (TRL: 0.0) and where the stage docstring says.
  config.rl = ml_collections.ConfigDict()
  config.rl.group_size = 8                # completions per prompt (TRL: num_generations)
  config.rl.max_prompt_len = 64           # prompt tokens, left-padded; longer prompts skipped
  config.rl.max_new_tokens = 32           # completion tokens at most (TRL:
                                          # max_completion_length)
  config.rl.temperature = 1.0             # sampling of the rollouts
  config.rl.top_k = 0                     # 0: no limit
  config.rl.top_p = 1.0                   # 1: no limit
  config.rl.rollout_layout = "unrolled"   # unrolled: a per-layer copy of the weights inside
                                          # the rollout jit, freed after it | scanned: decode
                                          # from the state's stacked layers, no copy
                                          # (experiments/rl/README.md measures both)
  config.rl.reward = "exact"              # comma-separated: exact | format | true | model |
                                          # module:function (lm/rl/rewards.py)
  config.rl.reward_weights = ""           # comma-separated, one per reward; "": 1 each
  config.rl.reward_model = ""             # reward="model": the workdir of a stage="reward" run
  config.rl.epsilon = 0.2                 # clip the ratio below at 1 - epsilon
  config.rl.epsilon_high = 0.0            # ... and above at 1 + epsilon_high; 0: = epsilon
  config.rl.beta = 0.04                   # KL penalty to the frozen reference; 0: no reference
  config.rl.kl_estimator = "k3"           # k1 | k3 (lm/rl/losses.py)
  config.rl.scale_rewards = "group"       # advantages divided by the std of: group | batch | none
  config.rl.loss_type = "token"           # sequence (GRPO) | token (DAPO, TRL's default) |
                                          # dr_grpo (constant normaliser)
  config.rl.num_iterations = 1            # updates per batch of rollouts (TRL: mu)
  config.rl.samples_every = 50            # steps between samples written to samples.jsonl; 0: never
  config.rl.samples = 4                   # completions written each time

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1                   # -1: every device not used by the other axes
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  # Across slices (Multislice: slices joined by the data-center network, DCN): dcn_data *
  # dcn_fsdp = the number of slices; each multiplies its axis above, which then lays out one
  # slice (lm/parallel/mesh.py). On CPU and GPU a process counts as a slice.
  config.mesh.dcn_data = 1
  config.mesh.dcn_fsdp = 1
  config.mesh.rules = ""                  # overrides of lm/parallel/rules.py, "kv_heads=,..."
  return config


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.lock()
  return config


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The preset named by `model.preset` with every non-None `model.*` field applied. A field
  missing from `config` (the config.json of a workdir written before the field existed)
  keeps the preset's value."""
  base = presets.get(config.model.preset)
  overrides = {f.name: config.model.get(f.name) for f in dataclasses.fields(ModelConfig)
               if config.model.get(f.name) is not None}
  return base.replace(**overrides)


def data_fields(config: ml_collections.ConfigDict, stage) -> tuple[str, ...]:
  """The record fields the run reads: `data.fields` where set, else the stage's own."""
  if config.data.fields:
    return tuple(f.strip() for f in config.data.fields.split(",") if f.strip())
  return tuple(stage.fields)


def validate(config: ml_collections.ConfigDict, model: ModelConfig, tokenizer_vocab: int,
             mesh_shape: dict[str, int]) -> None:
  """Fails before anything compiles, naming each config field that cannot work."""
  t = config.train
  num_data_shards = mesh_shape["data"] * mesh_shape["fsdp"]
  batch_axes = "mesh.data * mesh.fsdp"
  if config.mesh.get("dcn_data", 1) * config.mesh.get("dcn_fsdp", 1) > 1:
    batch_axes = "mesh.dcn_data * mesh.data * mesh.dcn_fsdp * mesh.fsdp"
  errors = []
  for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every", "eval_every",
               "checkpoint_every", "keep_checkpoints"):
    if t[name] <= 0:
      errors.append(f"train.{name}={t[name]} must be positive")
  if t.grad_accum > 0 and t.batch_size % t.grad_accum:
    errors.append(f"train.batch_size={t.batch_size} is not divisible by "
                  f"train.grad_accum={t.grad_accum}")
  elif t.grad_accum > 0 and (t.batch_size // t.grad_accum) % num_data_shards:
    errors.append(f"train.batch_size={t.batch_size} / train.grad_accum={t.grad_accum} must be "
                  f"divisible by {batch_axes} = {num_data_shards}")
  if model.num_heads % mesh_shape["tensor"]:
    errors.append(f"model.num_heads={model.num_heads} is not divisible by "
                  f"mesh.tensor={mesh_shape['tensor']}")
  if t.seq_len > model.max_seq_len:
    errors.append(f"train.seq_len={t.seq_len} exceeds model.max_seq_len={model.max_seq_len}")
  if tokenizer_vocab > model.vocab_size:
    errors.append(f"model.vocab_size={model.vocab_size} is smaller than the vocabulary of "
                  f"data.tokenizer={config.data.tokenizer!r} ({tokenizer_vocab})")
  d = config.data
  if d.shards < 0 or (d.shards and t.batch_size % d.shards):
    errors.append(f"data.shards={d.shards} must be 0 (one per process) or divide "
                  f"train.batch_size={t.batch_size}")
  for name in ("num_threads", "num_workers", "prefetch", "shuffle_rows"):
    if d[name] < 0:
      errors.append(f"data.{name}={d[name]} must be >= 0")
  if d.truncate not in ("cut", "drop"):
    errors.append(f"data.truncate={d.truncate!r} is not one of ['cut', 'drop']")
  if d.eval_documents < 0:
    errors.append(f"data.eval_documents={d.eval_documents} must be >= 0 (0: all)")
  if d.eval_every_nth < 2:
    errors.append(f"data.eval_every_nth={d.eval_every_nth} must be >= 2")
  if not 0 <= t.min_lr_ratio <= 1:
    errors.append(f"train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1]")
  if t.lr <= 0:
    errors.append(f"train.lr={t.lr} must be positive")
  if t.on_nonfinite not in ("skip", "stop"):
    errors.append(f"train.on_nonfinite={t.on_nonfinite!r} is not one of ['skip', 'stop']")
  if t.spike_sigma < 0:
    errors.append(f"train.spike_sigma={t.spike_sigma} must be >= 0 (0 turns the guard off)")
  if t.spike_window <= 0:
    errors.append(f"train.spike_window={t.spike_window} must be positive")
  try:
    profile_lib.parse_steps(t.profile_steps)
  except ValueError as e:
    errors.append(str(e))
  if errors:
    raise ValueError("Invalid config: " + "; ".join(errors))
