"""LoRA: low-rank adapters on chosen projections of a frozen base, through qwix.

Letters: L layers (stacked under nn.scan), R the adapter rank; a weight W is [*in, *out]
(`in` the axes a matmul contracts), I and O their flattened sizes.

qwix's interception (`qwix.apply_lora_to_model`) reaches the `dot_general` of every weight
matmul in lm (all go through `lm.model.layers.token_matmul`), also under nn.scan and remat,
and knows which parameter its right operand is. For each weight whose path `targets`
matches (a regex searched in e.g. `layers/attention/query`), it adds
`y += (alpha / rank) * (x @ A) @ B` with two parameters beside W: `W_lora_a` [*in, R] and
`W_lora_b` [R, *out] ([L, ...] when scanned). A is He-uniform, B zero, so at initialisation
the adapted model computes exactly the base. The adapters carry W's logical axes plus a
replicated `lora_rank`, so they shard with the base under every mesh.

QLoRA: a base weight stored quantized (lm/model/quant.py) reaches the model as a `Quantized`;
the provider's interception of `Module.param` dequantizes it where the layer reads it (under
nn.scan: one layer's codes), and its matmul dequantizes it again inside `jax.checkpoint`, so
neither the forward pass nor the saved residuals (under every remat policy) hold more than
the layer's float kernel at a time: the backward pass recomputes it from the codes.

PEFT's `lora_A.weight` [R, I] and `lora_B.weight` [O, R] are A and B flattened and transposed.
"""

import dataclasses
import re
import weakref
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix
from qwix._src import interception
from qwix._src.providers import ptq
from qwix._src.utils import flax_util

from lm.model import quant

ADAPTER = re.compile(r"_lora_[ab]$")
DEFAULT_TARGETS = r"attention/(query|key|value|out)$|mlp/(wi_up|wi_gate|wo)$"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int                 # R; 0: no adapters
  alpha: float = 16.0       # the update is scaled by alpha / rank
  dropout: float = 0.0      # on the adapter's input, when apply gets rngs={"dropout": key}
  targets: str = DEFAULT_TARGETS  # regex over weight paths ("layers/mlp/wo")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def from_config(section: Any) -> LoraConfig | None:
  """The `lora` config section as a LoraConfig, or None when `lora.rank` is 0; a ValueError
  names the field that cannot work."""
  if section.rank == 0:
    return None
  errors = []
  if section.rank < 0:
    errors.append(f"lora.rank={section.rank} must be >= 0 (0 turns LoRA off)")
  if section.alpha <= 0:
    errors.append(f"lora.alpha={section.alpha} must be positive")
  if not 0 <= section.dropout < 1:
    errors.append(f"lora.dropout={section.dropout} must be in [0, 1)")
  try:
    re.compile(section.targets)
  except re.error as e:
    errors.append(f"lora.targets={section.targets!r} is not a regex ({e})")
  if errors:
    raise ValueError("Invalid config: " + "; ".join(errors))
  return LoraConfig(rank=section.rank, alpha=section.alpha, dropout=section.dropout,
                    targets=section.targets)


class _Provider(qwix.LoraProvider):
  """qwix's interception of every weight matmul; the adapters on the targeted ones.

  qwix's own adapter creation (`LoraProvider.dot_general`) fails inside a mesh context with
  logical-axis rules, as lm initialises its state: it rewrites the base weight's boxed metadata
  onto the adapter's value and unboxes it, which constrains the rank-2 adapter with the rank-3
  weight's sharding. So the adapters are created here: A [*in, R] and B [R, *out] keep the
  weight's own axes and names (a `lora_rank` axis added), not flattened."""

  def __init__(self, lora: LoraConfig):
    super().__init__(module_path=".*", rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout)
    self._lora = lora
    self._targets = re.compile(lora.targets)
    self._dequantized: dict[int, tuple] = {}  # id(weight) -> (weakref to it, name, codes)

  def nn_param(self, module: nn.Module, name: str, *args, **kwargs):
    """A quantized base weight, dequantized where its layer reads it (what the model sees;
    its matmul, in `dot_general`, dequantizes again inside a checkpoint)."""
    stored = module.get_variable("params", name) if module.has_variable("params", name) else None
    if not isinstance(stored, quant.Quantized):
      return super().nn_param(module, name, *args, **kwargs)
    w = quant.dequantize(stored)
    self._dequantized = {k: v for k, v in self._dequantized.items() if v[0]() is not None}
    self._dequantized[id(w)] = (weakref.ref(w), name, stored)
    return w

  def _weight(self, rhs: Any) -> tuple[str | None, quant.Quantized | None]:
    """(the parameter a matmul's right operand is, its codes when quantized), through the
    casts the model applies to it; (None, None) for an activation."""
    x = rhs
    while True:
      ref, name, stored = self._dequantized.get(id(x), (None, None, None))
      if ref is not None and ref() is x:
        return name, stored
      parent = getattr(x, "parent", None)
      if parent is None or len(parent.in_tracers) != 1:
        break
      x = parent.in_tracers[0]
    try:
      return flax_util.find_param(rhs, ptq.WithAux), None
    except ValueError:  # several parameters of rhs's shape: not one of them (qwix's heuristic)
      return None, None

  def einsum(self, *args, **kwargs):
    """Unadapted: lm's weights meet activations in `token_matmul` (dot_general); an einsum is
    attention's (qwix's own LoRA on einsums would take an activation for a weight whose shape
    it shares)."""
    return ptq.PtqProvider.einsum(self, *args, **kwargs)

  def dot_general(self, lhs, rhs, dimension_numbers, *args, **kwargs):
    name, stored = self._weight(rhs)
    if stored is None:
      y = ptq.PtqProvider.dot_general(self, lhs, rhs, dimension_numbers, *args, **kwargs)
    else:  # QLoRA: the float kernel exists inside this checkpoint alone (recomputed backward)
      def matmul(x, q):
        return jax.lax.dot_general(x, quant.dequantize(q, rhs.dtype), dimension_numbers, *args,
                                   **kwargs)
      y = jax.checkpoint(interception.disable_interceptions(matmul))(lhs, stored)
    if name is None:  # not a weight (attention scores, ...)
      return y
    module = flax_util.get_current_module()
    path = "/".join(str(p) for p in module.path) + "/" + name
    if not self._targets.search(path):
      return y
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if lhs_batch or rhs_batch or tuple(rhs_contract) != tuple(range(len(rhs_contract))):
      raise ValueError(f"lora.targets={self._lora.targets!r} matches {path}, whose matmul is "
                       "not x @ W over W's leading axes")
    boxed = module.get_variable("params", name)
    names = tuple(getattr(boxed, "names", None) or (None,) * rhs.ndim)
    k = len(rhs_contract)
    r = self._lora.rank
    he_uniform = nn.initializers.he_uniform(in_axis=tuple(range(k)), out_axis=-1)
    a = param_like(module, name + "_lora_a", (*rhs.shape[:k], r), (*names[:k], "lora_rank"),
                   he_uniform)                                  # [*in, R]
    b = param_like(module, name + "_lora_b", (r, *rhs.shape[k:]), ("lora_rank", *names[k:]),
                   nn.initializers.zeros)                       # [R, *out]
    x = lhs
    if self._lora.dropout and module.has_rng("dropout"):  # training: the loss passes the key
      keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - self._lora.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self._lora.dropout), 0).astype(x.dtype)
    d = interception.disable_interceptions(_low_rank)(x, a, b, lhs_contract)  # [tokens, *out]
    return y + (self._lora.scale * d).astype(y.dtype)


def _low_rank(x: jax.Array, a: jax.Array, b: jax.Array, contract) -> jax.Array:
  """(x @ A) @ B, outside qwix's interception (its matmuls are no weights to adapt)."""
  k = a.ndim - 1
  h = jax.lax.dot_general(x, a.astype(x.dtype), ((contract, tuple(range(k))), ((), ())))
  return jnp.tensordot(h, b.astype(h.dtype), axes=1)


def param_like(module: nn.Module, name: str, shape, axes, init) -> jax.Array:
  """A float32 adapter parameter with logical axes (as lm.model.layers.param makes them)."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                      jnp.float32)


def adapt(model: nn.Module, lora: LoraConfig) -> nn.Module:
  """`model` with adapters on the targeted weights (same call signature, more parameters)."""
  return qwix.apply_lora_to_model(model, _Provider(lora))


def _flat(tree: Any) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(tree, sep="/") if tree else {}


def is_adapter(path: str) -> bool:
  return ADAPTER.search(path) is not None


def split(params: Any) -> tuple[Any, Any]:
  """(adapters, base) of a parameter tree (or of its shapes or shardings: a pure tree
  function)."""
  flat = _flat(params)
  adapters = {k: v for k, v in flat.items() if is_adapter(k)}
  base = {k: v for k, v in flat.items() if not is_adapter(k)}
  unflatten = lambda d: flax.traverse_util.unflatten_dict(d, sep="/")
  return unflatten(adapters), unflatten(base)


def join(adapters: Any, base: Any) -> Any:
  """The whole tree the adapted model applies: base and adapters side by side."""
  return flax.traverse_util.unflatten_dict({**_flat(base), **_flat(adapters)}, sep="/")


def delta(weight: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """scale * A @ B in the weight's shape: W [(L,) *in, *out], A [(L,) *in, R], B [(L,) R, *out]
  (L: stacked layers under nn.scan, when A has more axes than the weight's inputs)."""
  layers = a.ndim + b.ndim - 2 - weight.ndim  # 1 when scanned (L counted twice), else 0
  a2 = a.reshape(*a.shape[:layers], -1, a.shape[-1]).astype(jnp.float32)   # [(L,) I, R]
  b2 = b.reshape(*b.shape[:layers + 1], -1).astype(jnp.float32)          # [(L,) R, O]
  update = jnp.einsum("...ir,...ro->...io", a2, b2)                        # [(L,) I, O]
  return (scale * update).reshape(weight.shape)


def merge(params: Any, lora: LoraConfig) -> Any:
  """The base tree with every adapter folded in, `W + (alpha / rank) * A @ B`: what the
  adapted model computes, as a plain model (inference, export)."""
  adapters, base = (_flat(t) for t in split(params))
  merged = dict(base)
  for name, w in base.items():
    if name + "_lora_a" in adapters:
      a, b = adapters[name + "_lora_a"], adapters[name + "_lora_b"]
      merged[name] = (w + delta(w, a, b, lora.scale)).astype(w.dtype)
  return flax.traverse_util.unflatten_dict(merged, sep="/")

