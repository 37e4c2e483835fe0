"""Splash attention (the TPU Pallas kernel of jax.experimental.pallas.ops.tpu.splash_attention)
for training and scoring: causal, within packed documents, within a sliding window, GQA.

Letters: B batch, T query length, S key length (= T), N query heads, K kv heads, H head dim.

The kernel never materialises the [B, N, T, T] scores: it walks blocks of queries and keys,
skips blocks the mask rules out, and keeps only the output and a float32 log-sum-exp per
query for the backward pass. It takes one sequence at a time (q [N, T, H], k and v
[K, S, H], query head i reading kv head i // (N / K)), so the batch is a vmap. Under a
mesh it runs inside `shard_map`: each device gets its rows of the batch and its heads, found
from the logical axis rules (`act_batch`, `act_heads`, `act_kv_heads`), so the model still
names no mesh axis. Off TPU it runs in Pallas' interpret mode (slow; for tests).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import PartitionSpec

BLOCK = 128  # the kernel's smallest block; T must be a multiple of it


def block_size(seq_len: int) -> int:
  """Query/key block: 512 where T allows (fewer grid steps on TPU), else 128."""
  return 512 if seq_len % 512 == 0 else BLOCK


def make_kernel(num_heads: int, seq_len: int, sliding_window: int, interpret: bool):
  """The kernel for `num_heads` local query heads of length `seq_len`. Built at each trace,
  not cached: it holds the processed mask as arrays, which must belong to the trace."""
  shape = (seq_len, seq_len)
  if sliding_window:  # query - key < window, keys not after the query
    head_mask = mask_lib.LocalMask(shape, window_size=(sliding_window - 1, 0), offset=0)
  else:
    head_mask = mask_lib.CausalMask(shape)
  b = block_size(seq_len)
  sizes = kernel_lib.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                                block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b,
                                block_kv_dq=b)
  return kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([head_mask] * num_heads),
                                    block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)


def _attend(query: jax.Array, key: jax.Array, value: jax.Array,
            segment_ids: jax.Array | None, sliding_window: int, interpret: bool) -> jax.Array:
  """query [B, N, T, H] (already scaled), key and value [B, K, S, H] -> [B, N, T, H]."""
  kernel = make_kernel(query.shape[1], query.shape[2], sliding_window, interpret)
  if segment_ids is None:
    return jax.vmap(kernel)(query, key, value)
  ids = kernel_lib.SegmentIds(q=segment_ids, kv=segment_ids)
  return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(query, key, value, ids)


def _mesh_axes(logical: str) -> tuple[str, ...]:
  """The mesh axes the current rules put a logical activation axis on (() if none)."""
  axes = nn.logical_to_mesh_axes((logical,))[0]
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def splash_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                     segment_ids: jax.Array | None, sliding_window: int) -> jax.Array:
  """query [B, T, N, H], key and value [B, S, K, H] -> [B, T, N, H], as
  `jax.nn.dot_product_attention(..., is_causal=True)` with the same segment and window masks."""
  seq_len = query.shape[1]
  if seq_len % BLOCK:
    raise ValueError(f"model.attention='splash' needs a sequence length that is a multiple of "
                     f"{BLOCK}, got {seq_len} (train.seq_len); use model.attention='xla'")
  interpret = jax.default_backend() != "tpu"
  scale = query.shape[-1] ** -0.5  # the kernel does not scale the scores
  q = jnp.swapaxes(query * jnp.asarray(scale, query.dtype), 1, 2)  # [B, N, T, H]
  k, v = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)        # [B, K, S, H]
  attend = functools.partial(_attend, sliding_window=sliding_window, interpret=interpret)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = attend(q, k, v, segment_ids)
  else:
    batch, heads, kv_heads = (_mesh_axes(a) or None
                              for a in ("act_batch", "act_heads", "act_kv_heads"))
    if kv_heads != heads:  # a device's query heads must find their kv heads locally
      group = q.shape[1] // k.shape[1]
      k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)  # [B, N, S, H]
      kv_heads = heads
    q_spec = PartitionSpec(batch, heads, None, None)
    kv_spec = PartitionSpec(batch, kv_heads, None, None)
    ids_spec = PartitionSpec(batch, None)
    if segment_ids is None:
      out = jax.shard_map(lambda q, k, v: attend(q, k, v, None), mesh=mesh,
                          in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                          check_vma=False)(q, k, v)
    else:
      out = jax.shard_map(attend, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, ids_spec),
                          out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)
  return jnp.swapaxes(out, 1, 2)  # [B, T, N, H]
