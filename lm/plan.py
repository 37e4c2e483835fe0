"""`lm plan`: memory per device, FLOPs and step-time bounds of a config on a target slice.

Works on shapes alone, so it answers for 64 or 6144 chips that are not here: parameters come
from `jax.eval_shape`, their layout from the logical-axis rules mapped onto an
`AbstractMesh`, and each dimension is divided (ceil) by the mesh axes it is sharded over.
Where the target is the local devices, the real training step is also compiled ahead of
time and XLA's own memory analysis is printed beside the analytic figures.

Letters: L layers, D model dim, N query heads, K kv heads, H head dim, F ffn dim, V vocab,
T sequence length. Per device, after sharding: m tokens in one micro-batch (rows /
grad_accum / (data * fsdp) sequences of T), d = D / ways(act_embed), n = N / ways(act_heads),
k = K / ways(kv_heads), f = F / ways(act_mlp), v = V / ways(act_vocab); s bytes per element
of the compute dtype (`model.dtype`).

It sits above lm/train/ and lm/stages/ (it builds the stage's real training step), so that
lm/parallel/ stays below them.

Memory per device:
  parameters       float32, sharded by the rules: the trainable ones (LoRA: the adapters), and
                   the stage's frozen ones (a reference model, a LoRA base) beside them,
                   sharded alike; a QLoRA base's weight matrices as their codes and scales
                   (NF4: 4.5 bits a weight, 4.13 with double quantization; int8: 8.5), split
                   like the weight's first axis where it divides (lm/model/quant.py).
  gradients        float32, sharded like the parameters; twice that with grad_accum > 1
                   (the running sum and the micro-batch's gradient).
  optimizer state  the real optax state (`jax.eval_shape(tx.init, params)`) laid out as
                   lm/train/state.py lays it out: leaves shaped like a parameter share its
                   sharding, the rest (Adafactor's factored rows and columns) are replicated.
  activations      saved + max(one block's backward, the output layer's backward), where

    saved = L m S(remat) + m (12 d + s d) [+ m 5 n T under remat none]
      S(remat) is what one block keeps per token for the backward pass: the residuals
      JAX's autodiff saves for lm/model (tests/test_plan.py checks these counts):
        none           s(2d + 2nH + 2kH + c f + nT) + 4(6d + nT + 2n + 4)
                       c = 8 for GeGLU, else 6; the 4(...) part is float32: norm internals,
                       attention logits and softmax statistics. When s < 4 the block's weight
                       matrices are saved again in the compute dtype
                       (not a QLoRA base's: its matmuls dequantize them again).
        dots           s(2d + 2nH + 2kH + g f) + 4 nT   (g = 2 for gated MLPs, else 1)
        dots_no_batch  s(2d + nH + 2kH + g f)           (no attention scores)
        full           s d                              (only the block's input)
      12 d + s d is the final norm's; the bracket is the causal mask [B, N, T, T] (bool and
      float32), hoisted out of the layer loop. Attention scores [B, N, T, T] appear because
      the XLA path of `jax.nn.dot_product_attention` materialises them. With a fused kernel
      (model.attention resolving to splash or cudnn on the target) every nT term above is
      dropped, a float32 log-sum-exp per head (4 n) is kept under remat none and dots, and
      there is no mask.
    one block's backward = m S(none) + the block's weights gathered over the batch axes
      (data, fsdp) in the compute dtype: its intermediates (recomputed under remat) or their
      gradients, and the FSDP all-gather.
    the output layer's backward = 8 m' v + (s + 4) V D / ways(vocab, embed without batch
      axes): float32 logits kept for the loss gradient and that gradient; the output
      projection gathered in the compute dtype and its full float32 gradient before the
      reduce-scatter (none for a LoRA base's frozen projection). m' = m, or with
      model.loss_chunk = C the tokens of one chunk,
      m C / T (lm/model/output.py).

  Checked against XLA's memory analysis of the compiled step on 8 CPU devices, float32
  (the CPU backend computes bfloat16 in float32, so bfloat16 cannot be checked there):
  within 10% over remat none/full/dots/dots_no_batch, fsdp, data and tensor meshes,
  grad_accum, Adafactor and logits-heavy shapes; 20% high for a logits-heavy model with tied
  embeddings, where XLA reduces partial logits instead of gathering the table; up to 25%
  high with the chunked loss on a logits-heavy model, whose saving it gets within 2%.
  Splash and cuDNN cannot be compiled here (the CPU runs splash in interpret mode), so the
  fused-kernel terms are not checked against XLA.

Across slices (`--num_slices`, `mesh.dcn_data` x `mesh.dcn_fsdp`), what crosses the
data-center network is a separate bound: per host, ring collectives over n slices move
(n - 1) / n of their bytes each way (an all-reduce twice that), and each of a slice's H hosts
carries 1/H of them. With G the float32 gradient bytes of the trainable parameters:
  dcn_data = a   the gradient all-reduce, 2 (a - 1) / a x G / (f H)
  dcn_fsdp = f   the weight all-gathers in the compute dtype (as many as the HBM bound reads
                 the gathered weights, each micro-batch) and the gradient reduce-scatter,
                 (f - 1) / f x (reads x grad_accum x G s / 4 + G) / H
divided by the table's DCN bandwidth per host. XLA may overlap it with compute; it bounds
the step from below only when it exceeds the compute time.

Time per step: FLOPs = lm.train.state.flops_per_token x rows x seq_len, the rows of one step
as the loop counts them for tokens/s and MFU (a preference stage: chosen and rejected, 2 x
batch_size; DPO's forward pass through a live reference, 1/3 more, is left out of both, as
model FLOPs leave it out); at 100% MFU
the step takes FLOPs / (peak x chips); 40% MFU is a realistic target for a tuned run. The
HBM bound is the time each chip needs to move the bytes it cannot avoid: the gathered block
weights read twice per micro-batch (three times under remat) and their gradient written
once, the saved activations written and read once, and the optimizer reading and writing
parameters, gradients and its state.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import AbstractMesh, AxisType

from lm import config as config_lib
from lm import plan_rl
from lm import stages
from lm.data import tokenizer as tokenizer_lib
from lm.model import ModelConfig
from lm.model import quant
from lm.model.attention import attention_kernel
from lm.model.heads import RewardModel
from lm.parallel import mesh as mesh_lib
from lm.parallel.accelerators import ACCELERATORS, GiB, Accelerator, local_accelerator
from lm.parallel import rules as rules_lib
from lm.train import loop as loop_lib
from lm.train import optim
from lm.train import state as state_lib
from lm.train.stage import Stage

REALISTIC_MFU = 0.4


def resolve_target(accelerator: str | None = None, num_devices: int | None = None,
                   num_slices: int = 1) -> tuple[Accelerator, int, bool]:
  """(accelerator, chips, is_local) from `v5p`, a slice name `v5p-64` (= 32 chips), or None.

  None means the local devices; a bare name without --num_devices takes the local count.
  A slice name counts one slice: the chips are its chips x `num_slices`; --num_devices
  counts every chip.
  """
  if num_devices is not None and num_devices <= 0:
    raise ValueError(f"--num_devices={num_devices} must be positive")
  if num_slices <= 0:
    raise ValueError(f"--num_slices={num_slices} must be positive")
  if accelerator is None:
    acc, count = local_accelerator(), None
  else:
    name, _, suffix = accelerator.lower().rpartition("-")
    if not (name and suffix.isdigit()):
      name, suffix = accelerator.lower(), ""
    if name not in ACCELERATORS:
      raise ValueError(f"--accelerator={accelerator!r} is not one of {sorted(ACCELERATORS)} "
                       "(optionally with a slice size, e.g. v5p-64)")
    acc, count = ACCELERATORS[name], None
    if suffix:
      per_chip = acc.cores_per_slice_unit
      if int(suffix) <= 0 or int(suffix) % per_chip:
        raise ValueError(f"--accelerator={accelerator!r}: the size must be a positive multiple "
                         f"of {per_chip}" + (f" ({name} slices count TensorCores, {per_chip} "
                                             "per chip)" if per_chip > 1 else ""))
      count = int(suffix) // per_chip * num_slices
  if num_devices is not None and count is not None and num_devices != count:
    raise ValueError(f"--num_devices={num_devices} contradicts --accelerator={accelerator!r} "
                     f"({count} chips" + (f" in {num_slices} slices" if num_slices > 1 else "")
                     + "); give one of them")
  count = count or num_devices or jax.device_count()
  if count % num_slices:
    raise ValueError(f"--num_slices={num_slices} does not divide the {count} devices into "
                     "slices of equal size")
  try:
    local = local_accelerator()
  except ValueError:
    local = None
  is_local = (accelerator is None or acc == local) and count == jax.device_count()
  return acc, count, is_local


@dataclasses.dataclass(frozen=True)
class Compiled:
  """XLA's memory analysis of the compiled step, bytes per device."""
  device_kind: str
  argument: int   # the train state and the batch
  output: int     # the new state and the metrics
  alias: int      # outputs written over donated arguments
  temp: int       # everything else live at the peak: gradients, activations, scratch

  @property
  def total(self) -> int:
    return self.argument + self.output - self.alias + self.temp


@dataclasses.dataclass(frozen=True)
class Activations:
  """Activation bytes per device: what stays saved, plus the larger backward transient."""
  saved: float            # L blocks' residuals, the final norm's, the causal mask
  block_backward: float   # one block's backward: its intermediates and gathered weights
  output_backward: float  # the output layer's backward: logits, their gradient, weights

  @property
  def total(self) -> float:
    return self.saved + max(self.block_backward, self.output_backward)


@dataclasses.dataclass(frozen=True)
class Plan:
  model: ModelConfig
  num_params: int
  accelerator: Accelerator
  num_devices: int
  mesh: dict[str, int]
  batch_size: int             # rows of one step (a preference stage: 2 x train.batch_size)
  seq_len: int
  grad_accum: int
  micro_batch: int            # sequences per device in one micro-batch
  optimizer: str
  # Bytes per device.
  params: float               # the trainable parameters
  gradients: float
  optimizer_state: float
  activations: Activations
  flops_per_step: float
  hbm_traffic: float          # bytes per chip per step, a lower bound
  compiled: Compiled | None = None
  notes: tuple[str, ...] = ()
  frozen: float = 0.0         # the stage's frozen parameters (outside the optimizer)
  num_frozen: int = 0
  num_slices: int = 1
  hosts_per_slice: int = 1
  dcn_traffic: float = 0.0    # bytes per host per step over the data-center network
  attention: str = "xla"      # the attention kernel model.attention resolves to on the target
  rollout: plan_rl.Rollout | None = None  # RL stages: the rollout phase (lm/plan_rl.py)
  lora: str = ""              # "LoRA r=8": the trainable parameters are adapters
  frozen_storage: str = "float32"  # how the frozen tree is stored (a QLoRA base: "nf4 ...")
  rows_per_example: int = 1   # rows of one train.batch_size example (a preference pair: 2)

  @property
  def total(self) -> float:
    resident = self.params + self.frozen + self.optimizer_state
    update = self.gradients + self.activations.total
    if self.rollout is None:
      return resident + update
    return resident + self.rollout.reward_model + max(update, self.rollout.transient)

  @property
  def fits(self) -> bool:
    return self.total <= self.accelerator.hbm_bytes

  @property
  def compute_seconds(self) -> float:
    """Step time at 100% MFU."""
    return self.flops_per_step / (self.accelerator.peak_flops * self.num_devices)

  @property
  def hbm_seconds(self) -> float:
    return self.hbm_traffic / self.accelerator.hbm_bandwidth

  @property
  def dcn_seconds(self) -> float:
    """The DCN traffic's time per step (NaN where the table has no bandwidth)."""
    return self.dcn_traffic / self.accelerator.dcn_bandwidth if self.dcn_traffic else 0.0


def dcn_bytes_per_host(gradient_bytes: float, dcn_data: int, dcn_fsdp: int,
                       hosts_per_slice: int, weight_gathers: int, compute_itemsize: int) -> float:
  """Bytes each host sends over the DCN per step (the formula in the module docstring).

  `gradient_bytes`: the float32 gradients of the trainable parameters, whole;
  `weight_gathers`: all-gathers of the weights per step (reads x grad_accum).
  """
  a, f, h = dcn_data, dcn_fsdp, hosts_per_slice
  all_reduce = 2 * (a - 1) / a * gradient_bytes / f
  fsdp = (f - 1) / f * (weight_gathers * gradient_bytes * compute_itemsize / 4 + gradient_bytes)
  return (all_reduce + fsdp) / h


def _axes(entry) -> tuple[str, ...]:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _ways(logical: str, rules: rules_lib.Rules, mesh: dict[str, int]) -> int:
  """How many ways the rules split a logical axis on this mesh."""
  return math.prod(mesh[a] for a in _axes(nn.logical_to_mesh_axes((logical,), rules)[0]))


def _per_device_bytes(abstract: Any, shardings: Any, mesh: dict[str, int]) -> float:
  """Bytes one device holds: each dimension divided (ceil) by the mesh axes it is split over."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
    shape = [-(-size // math.prod(mesh[a] for a in _axes(entry)))
             for size, entry in zip(leaf.shape, spec)]
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return float(total)


def saved_per_token(model: ModelConfig, remat: str, d: int, n: int, k: int, f: int,
                    seq_len: int, fused: bool = False) -> float:
  """Bytes one block keeps per token for the backward pass (the formula in the docstring).

  Weight-shaped residuals (compute-dtype casts under remat none) are not included. `fused`:
  a splash or cuDNN kernel, which keeps a float32 log-sum-exp per head instead of scores.
  """
  s = model.compute_dtype.itemsize
  h = model.resolved_head_dim
  gated = 1 if model.mlp == "gelu" else 2
  if fused:  # no [N, T] scores per query token: a float32 log-sum-exp per head, counted once
    return saved_per_token(model, remat, d, n, k, f, 0) + (4 * n if remat in ("none", "dots")
                                                            else 0)
  scores = n * seq_len  # [N, T] per query token
  if remat == "full":
    return s * d
  if remat == "dots_no_batch":
    return s * (2 * d + n * h + 2 * k * h + gated * f)
  if remat == "dots":
    return s * (2 * d + 2 * n * h + 2 * k * h + gated * f) + 4 * scores
  mlp = 8 if model.mlp == "geglu" else 6
  return (s * (2 * d + 2 * n * h + 2 * k * h + mlp * f + scores)
          + 4 * (6 * d + scores + 2 * n + 4))


def _block_bytes(abstract_params: Any, shardings: Any, mesh: dict[str, int], num_layers: int,
                 matrices_only: bool = False) -> float:
  """Bytes of one block's parameters per device (the stacked `layers` or the `layers_i`).

  `matrices_only`: the weights of the block's matmuls, without norm scales and biases.
  """
  leaves, leaf_shardings = [], []
  for name in abstract_params:
    if name.startswith("layers"):
      stacked = name == "layers"
      with_paths = jax.tree_util.tree_leaves_with_path(abstract_params[name])
      for (path, leaf), sharding in zip(with_paths, jax.tree.leaves(shardings[name])):
        is_matrix = len(leaf.shape) - stacked >= 2 and not str(path[-1].key).endswith("bias")
        if is_matrix or not matrices_only:
          leaves.append(leaf)
          leaf_shardings.append(sharding)
  return _per_device_bytes(leaves, leaf_shardings, mesh) / num_layers


def activation_bytes(model: ModelConfig, micro_batch: int, seq_len: int,
                     rules: rules_lib.Rules, mesh: dict[str, int],
                     model_axes: dict[str, int], block_matrices: float,
                     block_gathered: float, kernel: str = "xla",
                     quantized: bool = False, frozen_output: bool = False) -> Activations:
  """Activation bytes per device (the formula in the module docstring).

  `model_axes`: the mesh with the batch axes set to 1 (weights gathered for a matmul);
  `block_matrices`: one block's weight matrices per device, float32; `block_gathered`:
  one block's parameters per device once gathered over the batch axes, float32; `kernel`:
  the attention kernel on the target (`attention_kernel`); `quantized`: a QLoRA base, whose
  weights the backward pass dequantizes again rather than keeps; `frozen_output`: the output
  projection is frozen (a LoRA base), so it has no float32 gradient.
  """
  s = model.compute_dtype.itemsize
  d = -(-model.d_model // _ways("act_embed", rules, mesh))
  n = -(-model.num_heads // _ways("act_heads", rules, mesh))
  k = -(-model.num_kv_heads // _ways("kv_heads", rules, mesh))
  f = -(-model.d_ff // _ways("act_mlp", rules, mesh))
  v = -(-model.vocab_size // _ways("act_vocab", rules, mesh))
  tokens = micro_batch * seq_len
  fused = kernel in ("splash", "cudnn")
  per_block = tokens * saved_per_token(model, model.remat, d, n, k, f, seq_len, fused)
  if model.remat == "none" and s < 4:
    per_block += block_matrices * s / 4
  saved = model.num_layers * per_block + tokens * (12 * d + s * d)
  if model.remat == "none" and not fused:
    saved += tokens * 5 * n * seq_len  # the causal mask, bool and float32
  output_weights = (-(-model.vocab_size // _ways("vocab", rules, model_axes))
                    * -(-model.d_model // _ways("embed", rules, model_axes)))
  logit_tokens = micro_batch * min(model.loss_chunk or seq_len, seq_len)  # one chunk's
  return Activations(
      saved=saved,
      block_backward=(tokens * saved_per_token(model, "none", d, n, k, f, seq_len, fused)
                      + block_gathered * s / 4),
      output_backward=logit_tokens * v * 8 + output_weights * (s + (0 if frozen_output else 4)))


def plan(config: ml_collections.ConfigDict, accelerator: str | None = None,
         num_devices: int | None = None, compile_step: bool | None = None,
         num_slices: int = 1) -> Plan:
  """The analytic plan of `config` on `accelerator` x `num_devices` (default: local devices),
  in `num_slices` slices (laid out by `mesh.dcn_data` x `mesh.dcn_fsdp`).

  `compile_step`: also compile the training step and read XLA's memory analysis; None
  does so where the target is the local devices, which is the only place it can.
  """
  acc, count, is_local = resolve_target(accelerator, num_devices, num_slices)
  is_local = is_local and num_slices == 1
  sizes = dict(zip(mesh_lib.AXES, mesh_lib.mesh_shape(config.mesh, count, num_slices)))
  model_config = config_lib.model_config(config)
  t = config.train
  tokenizer = tokenizer_lib.get(config.data.tokenizer)
  config_lib.validate(config, model_config, tokenizer.vocab_size, sizes)
  stage = stages.for_config(config)(config, tokenizer)
  rules = rules_lib.make_rules(config.mesh.get("rules", "") or "")
  model = stage.make_model(model_config)
  tx = optim.make_optimizer(t)

  notes = []
  try:
    rules_lib.check_divisible(state_lib.abstract_boxed_params(model), sizes, rules)
  except ValueError as e:
    notes.append(f"training would refuse this layout ({e}); sizes here round up")

  mesh = AbstractMesh(tuple(sizes.values()), tuple(sizes), axis_types=(AxisType.Auto,) * 3)
  abstract, shardings = state_lib.state_shardings(model, tx, mesh, rules, stage.partition,
                                                  model_config.frozen_dtype)
  params = _per_device_bytes(abstract.params, shardings.params, sizes)
  frozen = _per_device_bytes(abstract.frozen, shardings.frozen, sizes)  # codes where quantized
  lora = getattr(stage, "lora", None)
  quantize = getattr(stage, "quantize", "") if lora else ""
  opt_state = _per_device_bytes(abstract.opt_state, shardings.opt_state, sizes)
  gradients = params * (2 if t.grad_accum > 1 else 1)

  batch_ways = _ways("act_batch", rules, sizes)
  # Rows of one step: a preference pair is two (chosen, rejected), counted as the loop's
  # tokens/s and MFU count them; RL: one update's rows of rollouts.
  rows, seq_len = ((loop_lib.tokens_per_step(stage, t) // t.seq_len, t.seq_len)
                   if not plan_rl.is_rl(config) else plan_rl.update_shape(config))
  micro_batch = -(-rows // t.grad_accum // batch_ways)
  batch_axes = _axes(nn.logical_to_mesh_axes(("act_batch",), rules)[0])
  model_axes = {a: 1 if a in batch_axes else size for a, size in sizes.items()}  # gathered
  num_layers = model_config.num_layers
  all_params, all_shardings = state_lib.abstract_params_and_shardings(model, mesh, rules)
  block_gathered = _block_bytes(all_params, all_shardings, model_axes, num_layers)
  block_matrices = _block_bytes(all_params, all_shardings, sizes, num_layers,
                                matrices_only=True)
  kernel = attention_kernel(model_config, seq_len, acc.platform)
  # RL losses read whole logits (log-probs and entropy of every completion token): no chunks.
  activations = activation_bytes(model_config.replace(loss_chunk=0) if plan_rl.is_rl(config)
                                 else model_config, micro_batch, seq_len, rules, sizes,
                                 model_axes, block_matrices, block_gathered, kernel,
                                 quantized=bool(quantize), frozen_output=lora is not None)
  if plan_rl.is_rl(config):
    activations = plan_rl.update_activations(config, activations)

  s = model_config.compute_dtype.itemsize
  weight_reads = 3 if model_config.remat != "none" else 2
  hbm_traffic = (t.grad_accum * ((weight_reads + 1) * block_gathered * model_config.num_layers
                                 * s / 4 + 2 * activations.saved)
                 + 2 * params + gradients + 2 * opt_state)

  dcn_data, dcn_fsdp, _ = mesh_lib.dcn_shape(config.mesh, num_slices)
  hosts_per_slice = max(1, count // num_slices // acc.chips_per_host)
  dcn_traffic = dcn_bytes_per_host(
      _per_device_bytes(abstract.params, shardings.params, {a: 1 for a in sizes}),
      dcn_data, dcn_fsdp, hosts_per_slice, weight_reads * t.grad_accum, s)

  flops_per_step = state_lib.flops_per_token(model_config, seq_len) * rows * seq_len
  rollout = None
  if plan_rl.is_rl(config):
    rollout = plan_rl.rollout_memory(
        config, model_config, lambda logical: _ways(logical, rules, sizes),
        _per_device_bytes(abstract.params["policy"] if "policy" in abstract.params
                          else abstract.params, shardings.params["policy"]
                          if "policy" in abstract.params else shardings.params, sizes),
        lambda mc: state_lib.count_params(nn.unbox(state_lib.abstract_boxed_params(
            RewardModel(mc)))))
    matmul_weights = (state_lib.flops_per_token(model_config, 0) / 6.0)
    flops_per_step = (flops_per_step * plan_rl.updates_per_step(config)
                      + plan_rl.rollout_flops(rollout, matmul_weights, config.stage))

  compiled = None
  if compile_step or (compile_step is None and is_local and not notes):
    compiled = compile_memory(config, stage, model, tx, rules)
  return Plan(model=model_config, num_params=state_lib.count_params(abstract.params),
              frozen=frozen, num_frozen=state_lib.count_params(abstract.frozen),
              accelerator=acc, num_devices=count, mesh=sizes, batch_size=rows,
              rows_per_example=1 if plan_rl.is_rl(config) else getattr(stage,
                                                                      "rows_per_example", 1),
              seq_len=seq_len, grad_accum=t.grad_accum, micro_batch=micro_batch,
              optimizer=t.optimizer, params=params, gradients=gradients,
              optimizer_state=opt_state, activations=activations,
              flops_per_step=flops_per_step,
              hbm_traffic=hbm_traffic, compiled=compiled, notes=tuple(notes),
              num_slices=num_slices, hosts_per_slice=hosts_per_slice, dcn_traffic=dcn_traffic,
              attention=kernel, rollout=rollout, lora=f"LoRA r={lora.rank}" if lora else "",
              frozen_storage=quant.describe(quantize, stage.double_quant) if quantize
              else model_config.frozen_dtype)


def compile_memory(config: ml_collections.ConfigDict, stage: Stage, model: nn.Module,
                   tx: optax.GradientTransformation, rules: rules_lib.Rules) -> Compiled:
  """XLA's memory analysis of the real training step, compiled for the local devices.

  The step is lowered from abstract inputs that carry their shardings, exactly as
  lm/train/loop.py jits it, so nothing is allocated.
  """
  t = config.train
  mesh = mesh_lib.make_mesh(config.mesh)
  abstract, shardings = state_lib.state_shardings(
      model, tx, mesh, rules, stage.partition, config_lib.model_config(config).frozen_dtype)
  data_sharding = rules_lib.batch_sharding(mesh)
  example = stage.example_batch(t.batch_size, t.seq_len)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=data_sharding)
           for k, v in example.items()}
  step = loop_lib.make_train_step(model, tx, stage, t)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = jax.jit(step, in_shardings=(shardings, data_sharding),
                       out_shardings=(shardings, rules_lib.replicated(mesh)),
                       donate_argnums=(0,)).lower(
                           rules_lib.with_shardings(abstract, shardings), batch).compile()
  analysis = compiled.memory_analysis()
  return Compiled(device_kind=jax.devices()[0].device_kind,
                  argument=analysis.argument_size_in_bytes,
                  output=analysis.output_size_in_bytes, alias=analysis.alias_size_in_bytes,
                  temp=analysis.temp_size_in_bytes)


def _seconds(x: float) -> str:
  if math.isnan(x):
    return "unknown"
  return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _bytes(x: float) -> str:
  return f"{x / GiB:.2f} GiB" if x >= GiB / 10 else f"{x / 2 ** 20:.1f} MiB"


def format_plan(p: Plan) -> str:
  """The plan as a small table and a few lines, for the terminal."""
  m, c, a = p.model, p.compiled, p.activations
  unit, scale = ("GiB", GiB) if p.total >= GiB else ("MiB", 2 ** 20)
  of = "adapter " if p.lora else ""
  rows = [(f"{p.lora + ' adapters' if p.lora else 'parameters'} (float32)", p.params, None),
          *([(f"frozen {'base' if p.lora else 'parameters'} ({p.frozen_storage})", p.frozen,
              None)] if p.num_frozen else []),
          (f"{of}gradients (float32" + (", x2: grad_accum)" if p.grad_accum > 1 else ")"),
           p.gradients, None),
          (f"{of}optimizer state ({p.optimizer})", p.optimizer_state, None),
          (f"activations (remat {m.remat}, {m.dtype})", a.total, None)]
  kernels = (f"attention kernel: {p.attention} (model.attention={m.attention!r}); output "
             + ("logits whole (RL losses read every completion token's distribution)"
                if p.rollout is not None else
                f"layer and loss in chunks of {m.loss_chunk} positions (model.loss_chunk)"
                if m.loss_chunk else "logits whole (model.loss_chunk=0)"))
  if p.rollout is not None:
    rows += [(name, value, None) for name, value in plan_rl.format_rows(p.rollout)]
  if c:
    rows += [("  parameters + optimizer state", p.params + p.frozen + p.optimizer_state,
              (c.argument, "XLA arguments: state + batch")),
             ("  gradients + activations", p.gradients + a.total, (c.temp, "XLA temporaries"))]
  rows.append(("total", p.total, (c.total, "arguments + outputs - aliased + temporaries")
               if c else None))
  mesh = " ".join(f"{k}={v}" for k, v in p.mesh.items())
  where = (f"{p.num_devices} x {p.accelerator.name}" if p.num_slices == 1 else
           f"{p.num_slices} slices x {p.num_devices // p.num_slices} x {p.accelerator.name}")
  width = max(34, *(len(name) + 2 for name, _, _ in rows))
  header = f"{'per device':{width}s}{'analytic ' + unit:>14s}"
  if c:
    header += f"{'compiled ' + unit:>14s}  (XLA on {c.device_kind})"
  lines = [
      f"{m.num_layers}-layer model, {p.num_params / 1e9:.3f}B "
      + (f"{p.lora} adapter parameters" if p.lora else "parameters")
      + (f" (+{p.num_frozen / 1e9:.3f}B frozen)" if p.num_frozen else "") + ", on "
      f"{where} (mesh {mesh})",
      f"micro-batch per device: {p.micro_batch} x {p.seq_len} tokens (batch_size "
      + (f"{p.batch_size // p.rows_per_example} pairs = {p.batch_size} rows"
         if p.rows_per_example > 1 else f"{p.batch_size}")
      + f" / grad_accum {p.grad_accum} / data*fsdp "
      f"{p.mesh['data'] * p.mesh['fsdp']})",
      kernels, "", header]
  for name, analytic, compiled in rows:
    line = f"{name:{width}s}{analytic / scale:14.3f}"
    if compiled:
      line += f"{compiled[0] / scale:14.3f}  {compiled[1]}"
    lines.append(line)
  peak = "one block's" if a.block_backward >= a.output_backward else "the output layer's"
  lines.append(f"  activations = saved {a.saved / scale:.3f} + {peak} backward "
               f"{max(a.block_backward, a.output_backward) / scale:.3f} (one block "
               f"{a.block_backward / scale:.3f}, output layer {a.output_backward / scale:.3f})")
  hbm, tokens = p.accelerator.hbm_bytes, p.batch_size * p.seq_len
  bound = ("" if math.isnan(p.hbm_seconds) else
           " (compute-bound)" if p.hbm_seconds < p.compute_seconds else " (memory-bound)")
  lines += [
      "",
      f"fits in HBM: {'yes' if p.fits else 'NO'} ({p.total / GiB:.2f} of {hbm / GiB:.1f} GiB "
      f"per chip, {100 * p.total / hbm:.0f}%)",
      f"FLOPs per step: {p.flops_per_step:.3e} ({p.flops_per_step / tokens:.3e} per token x "
      f"{tokens:,} tokens)",
      f"step time: {_seconds(p.compute_seconds)} at 100% MFU, "
      f"{_seconds(p.compute_seconds / REALISTIC_MFU)} at {REALISTIC_MFU:.0%} MFU; "
      f"HBM traffic bound {_seconds(p.hbm_seconds)}{bound}",
  ]
  if p.num_slices > 1:
    gbps = p.accelerator.dcn_bandwidth / 1e9
    bandwidth = "unknown" if math.isnan(gbps) else f"{gbps:.0f} GB/s"
    step = p.compute_seconds / REALISTIC_MFU
    verdict = ("" if math.isnan(p.dcn_seconds) else
               f"; {p.dcn_seconds / step:.0%} of the {REALISTIC_MFU:.0%}-MFU step"
               + (" (DCN-bound)" if p.dcn_seconds > step else ""))
    lines.append(
        f"DCN bound: {_seconds(p.dcn_seconds)} per step across {p.num_slices} slices: "
        f"{_bytes(p.dcn_traffic)} sent per host ({p.hosts_per_slice} "
        f"host{'s' if p.hosts_per_slice > 1 else ''} per slice, {bandwidth} each){verdict}")
  if p.rollout is not None:
    lines.append(plan_rl.summary(p.rollout, p.gradients + a.total)
                 + "; the compiled figures are one update's")
  lines += [f"note: {note}" for note in p.notes]
  return "\n".join(lines)
