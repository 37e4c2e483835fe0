"""train_and_evaluate(config, workdir): the training loop, readable top to bottom.

Set-up (tokenizer, model, mesh, validation, data), then state (restored from the newest
checkpoint in `workdir`, else initialised sharded), then one `for step` loop with a jitted,
donated step and three periodic jobs: log, evaluate, checkpoint. The loss comes from the
stage (`config.stage`), so later stages reuse this loop with their own loss and batches.
A step with a non-finite loss or gradient, or a loss spike, applies no update; with
`train.on_nonfinite="stop"` the loop raises at its next log, eval or checkpoint step, before
saving (lm/train/guard.py).
"""

import json
import math
import time
from typing import Any, Callable

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from lm import config as config_lib
from lm.data import pipeline as pipeline_lib
from lm.data import sources
from lm.data import tokenizer as tokenizer_lib
from lm.interop import convert as init_from_lib
from lm.model import Decoder
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.stages import pretrain
from lm.train import checkpoint as checkpoint_lib
from lm.train import guard as guard_lib
from lm.train import metrics as metrics_lib
from lm.train import optim
from lm.train import preemption
from lm.train import state as state_lib
from lm.train import workdir as workdir_lib

STAGES = {"pretrain": pretrain}


def make_train_step(model: Decoder, tx: optax.GradientTransformation, loss_fn: Callable,
                    train_config: ml_collections.ConfigDict) -> Callable:
  """(state, batch) -> (state, metrics): gradient accumulation, one optimizer update unless
  the guard refuses it (lm/train/guard.py: non-finite values, loss spikes)."""
  schedule = optim.learning_rate_schedule(train_config)
  accum, z_loss = train_config.grad_accum, train_config.z_loss
  guard_args = dict(spike_sigma=train_config.spike_sigma, spike_window=train_config.spike_window,
                    stop=train_config.on_nonfinite == "stop")

  def apply(params, tokens, **kwargs):
    return model.apply({"params": params}, tokens, **kwargs)

  grad_fn = jax.grad(lambda p, b: loss_fn(apply, p, b, z_loss), has_aux=True)

  def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array]):
    if accum == 1:
      grads, sums = grad_fn(state.params, batch)
    else:
      # Micro-batch i takes rows i, i + accum, ...: every device keeps an equal share.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1),
          batch)  # [A, B / A, T]
      zeros = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro))
      zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), zeros)

      def add_micro_batch(total, micro_batch):
        return jax.tree.map(jnp.add, total, grad_fn(state.params, micro_batch)), None

      (grads, sums), _ = jax.lax.scan(add_micro_batch, zeros, micro)
    weight = jnp.maximum(sums["weight"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)  # token-mean over the whole batch
    loss, grad_norm = sums["nll"] / weight, optax.tree.norm(grads)
    ok, guard = guard_lib.check(state.guard, state.step, loss, grad_norm, **guard_args)

    def update(_):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return optax.apply_updates(state.params, updates), opt_state

    def refuse(_):  # the optimizer's counters advance, its moments stay
      _, opt_state = tx.update(grads, state.opt_state, state.params)
      return state.params, guard_lib.counters_only(opt_state, state.opt_state)

    params, opt_state = jax.lax.cond(ok, update, refuse, None)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "skipped": 1.0 - ok.astype(jnp.float32),
               "skipped_updates": guard.skipped.astype(jnp.float32)}
    if z_loss:
      metrics["z_loss"] = sums["z_loss"] / weight
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         guard=guard), metrics

  return train_step


def make_eval_step(model: Decoder, loss_fn: Callable) -> Callable:
  """params, batch -> sums of nll and tokens."""

  def eval_step(params, batch):
    _, sums = loss_fn(lambda p, t, **kw: model.apply({"params": p}, t, **kw), params, batch)
    return sums

  return eval_step


def evaluate(eval_step: Callable, params, eval_batches: list, num_bytes: int
             ) -> dict[str, float]:
  """Loss over every batch; bits per byte over `num_bytes`, the bytes of the evaluated text
  (pipeline_lib.EvalSet), so that it compares tokenizers."""
  totals: dict[str, float] = {}
  for batch in eval_batches:
    for name, value in jax.device_get(eval_step(params, batch)).items():
      totals[name] = totals.get(name, 0.0) + float(value)
  loss = totals["nll"] / max(totals["weight"], 1.0)
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
          "eval_bits_per_byte": totals["nll"] / math.log(2) / max(num_bytes, 1),
          "eval_tokens": totals["weight"]}


def raise_if_nonfinite(state: state_lib.TrainState, manager, to_close: list) -> None:
  """Stop mode: raises NonFiniteError when a step of `state` was not finite. Pending saves
  finish first, so the error can name the newest checkpoint, which is from before the fault
  (the loop calls this before it saves)."""
  step = int(jax.device_get(state.guard.first_nonfinite))
  if not step:
    return
  manager.wait_until_finished()
  newest = manager.latest_step()
  manager.close()
  for resource in to_close:
    resource.close()
  raise guard_lib.NonFiniteError(guard_lib.nonfinite_message(step, newest))


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  (epath.Path(workdir) / "config.json").write_text(
      config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns last metrics."""
  t = config.train
  is_main = jax.process_index() == 0

  # Set-up: everything that can fail on bad input fails here, before compiling.
  if config.stage not in STAGES:
    raise ValueError(f"stage={config.stage!r} is not one of {sorted(STAGES)}")
  stage = STAGES[config.stage]
  if config.init_from:  # the import fixes model.* and data.tokenizer (saved in config.json)
    config = init_from_lib.resolve(config)
  tokenizer = tokenizer_lib.get(config.data.tokenizer)
  model_config = config_lib.model_config(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = rules_lib.make_rules(config.mesh.rules)
  config_lib.validate(config, model_config, tokenizer.vocab_size, dict(mesh.shape))
  model = Decoder(model_config)
  rules_lib.check_divisible(state_lib.abstract_boxed_params(model), dict(mesh.shape), rules)
  source = sources.open_source(config.data)
  tx = optim.make_optimizer(t)
  abstract_state, shardings = state_lib.state_shardings(model, tx, mesh, rules)
  workdir_lib.prepare(workdir, state_lib.count_bytes(abstract_state))  # local or gs://
  config_json = json.loads(config.to_json_best_effort())  # saved in every checkpoint
  num_params = state_lib.count_params(abstract_state.params)
  flops_per_step = state_lib.flops_per_token(model_config, t.seq_len) * t.batch_size * t.seq_len
  peak_flops = metrics_lib.peak_flops_per_device(t.peak_flops) * mesh.size
  data_sharding = rules_lib.batch_sharding(mesh)
  rows = rules_lib.process_rows(data_sharding, t.batch_size)  # this process's share
  train_data = pipeline_lib.train_batches(source.train, tokenizer, config, rows)

  def to_global(batch):
    return {k: jax.make_array_from_process_local_data(data_sharding, v,
                                                      (t.batch_size, *v.shape[1:]))
            for k, v in batch.items()}

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # State: resume from the newest checkpoint, or initialise directly in sharded form.
    manager = checkpoint_lib.make_manager(workdir, t.keep_checkpoints)
    restored = checkpoint_lib.restore_latest(manager, abstract_state, shardings,
                                             train_data.shards,
                                             workdir_lib.resume_check(config_json, workdir))
    if restored is None and config.init_from:
      params = init_from_lib.load_params(config.init_from, model_config, shardings.params)
      state = state_lib.train_state_from_params(tx, params, shardings)
    elif restored is None:
      state = state_lib.create_train_state(model, tx, jax.random.key(config.seed), shardings)
    else:
      state, data_state = restored
    start_step, skipped = (int(x) for x in jax.device_get((state.step, state.guard.skipped)))
    if is_main:  # only now: a config the checkpoints refused must not replace theirs
      save_config(config, workdir)
    if restored is not None:  # continue the input streams where the checkpoint left them
      train_data = pipeline_lib.resume(train_data, data_state, start_step, source.train,
                                       tokenizer, config, rows)

    train_step = jax.jit(make_train_step(model, tx, stage.loss_fn, t),
                         in_shardings=(shardings, data_sharding),
                         out_shardings=(shardings, rules_lib.replicated(mesh)),
                         donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(model, stage.loss_fn),
                        in_shardings=(shardings.params, data_sharding))
    eval_set = pipeline_lib.eval_set(source.eval, tokenizer, config, rows)
    eval_data = [to_global(b) for b in eval_set.batches]

    writer = metrics_lib.MetricsWriter(workdir, enabled=is_main, start_step=start_step)
    progress = metrics_lib.ProgressLine(t.steps, enabled=is_main)
    progress.message(f"{'Resuming from checkpoint at' if restored else 'Starting at'} step "
                     f"{start_step} of {t.steps}: {num_params / 1e6:.2f}M parameters, "
                     f"mesh {dict(mesh.shape)}, workdir {workdir}"
                     + (f", from {config.init_from}" if config.init_from and not restored else ""))
    logging.info("Data: %s", source.description)
    if source.entropy_rate is not None:
      progress.message(f"The source's entropy rate, the lowest reachable loss: "
                       f"{source.entropy_rate:.4f} nats/token")
    last_metrics: dict[str, Any] = {"step": start_step}
    timer_step, timer_start = start_step, time.perf_counter()
    log_step = start_step

    with preemption.StopRequest() as stop_request:
      for step in range(start_step, t.steps):
        batch = to_global(next(train_data))
        state, step_metrics = train_step(state, batch)
        done = step + 1
        stop = stop_request.should_stop(done)  # SIGTERM / SIGINT: save this step and return

        if step == start_step:  # the first step compiles: keep it out of later tokens/s
          jax.block_until_ready(step_metrics)
          first_step_seconds = time.perf_counter() - timer_start
          logging.info("First step (compile included) took %.1fs", first_step_seconds)
          timer_step, timer_start = done, time.perf_counter()

        if done % t.log_every == 0 or done == t.steps or stop:
          host_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          if done > timer_step:
            seconds_per_step = (time.perf_counter() - timer_start) / (done - timer_step)
          else:  # only the compiling step so far
            seconds_per_step = first_step_seconds
          host_metrics["tokens_per_sec"] = t.batch_size * t.seq_len / seconds_per_step
          host_metrics["mfu"] = flops_per_step / seconds_per_step / peak_flops
          writer.write(done, host_metrics)
          newly_skipped = int(host_metrics["skipped_updates"]) - skipped
          skipped += newly_skipped
          progress.update(done, host_metrics["loss"], host_metrics["tokens_per_sec"],
                          host_metrics["mfu"], seconds_per_step,
                          extra=f" | {skipped} skipped" if skipped else "")
          if newly_skipped:
            logging.warning("%d of the %d updates up to step %d were skipped (a non-finite "
                            "loss or gradient norm, or a loss spike); %d in all", newly_skipped,
                            done - log_step, done, skipped)
          last_metrics = {"step": done, **host_metrics}
          timer_step, timer_start, log_step = done, time.perf_counter(), done

        if t.on_nonfinite == "stop" and (stop or done == t.steps or 0 in (
            done % t.log_every, done % t.eval_every, done % t.checkpoint_every)):
          raise_if_nonfinite(state, manager, [train_data, progress, writer])

        if done % t.eval_every == 0 or done == t.steps:
          eval_metrics = evaluate(eval_step, state.params, eval_data, eval_set.bytes)
          writer.write(done, eval_metrics)
          progress.message(f"eval at step {done}: loss {eval_metrics['eval_loss']:.4f} | "
                           f"ppl {eval_metrics['eval_perplexity']:.2f} | "
                           f"bits/byte {eval_metrics['eval_bits_per_byte']:.4f}")
          last_metrics.update(eval_metrics)
          timer_step, timer_start = done, time.perf_counter()  # keep eval out of tokens/s

        if done % t.checkpoint_every == 0 or done == t.steps or stop:
          # Async: training waits only for the device-to-host copy, measured here.
          save_start = time.perf_counter()
          checkpoint_lib.save(manager, state, train_data.get_state(), config_json, force=stop)
          writer.write(done, {"checkpoint_blocking_seconds": time.perf_counter() - save_start})

        if stop:
          progress.message(f"Stopped at step {done} as asked: checkpoint saved in {workdir}; "
                           "run the same command to resume")
          last_metrics["stopped_early"] = True
          break

    manager.wait_until_finished()
    manager.close()
    train_data.close()
    progress.close()
    writer.close()
  if source.entropy_rate is not None:
    last_metrics["entropy_rate"] = source.entropy_rate
  return last_metrics
