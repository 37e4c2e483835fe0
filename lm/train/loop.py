"""train_and_evaluate(config, workdir, stage): the training loop, readable top to bottom.

Three parts, one function each: `set_up` (tokenizer, model, mesh, validation, data: every
error from bad input happens here, before compiling), `initial_state` (restored from the
newest checkpoint in `workdir`, else initialised sharded, from imported parameters when
`init_from` says so), and `run_steps` (one `for step` loop with a jitted, donated step, or
the stage's own step (RL: rollouts around its updates), and three periodic jobs: log,
evaluate, checkpoint).

The loop knows no stage: the stage class it is given (lm/train/stage.py is the contract)
supplies the batches, the module, the split into trainable and frozen parameters, the loss
and the metrics. A step with a non-finite loss or gradient, or a loss spike, applies no
update; with `train.on_nonfinite="stop"` the loop raises at its next log, eval or checkpoint
step, before saving (lm/train/guard.py).
"""

import dataclasses
import json
import time
from typing import Any, Callable

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

from lm import config as config_lib
from lm.data import pipeline as pipeline_lib
from lm.data import sources
from lm.data import tokenizer as tokenizer_lib
from lm.interop import base_ref
from lm.interop import convert as init_from_lib
from lm.model import Decoder, ModelConfig
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.train import checkpoint as checkpoint_lib
from lm.train import guard as guard_lib
from lm.train import metrics as metrics_lib
from lm.train import optim
from lm.train import preemption
from lm.train import profile as profile_lib
from lm.train import state as state_lib
from lm.train import workdir as workdir_lib
from lm.train.stage import Stage, StageType


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, stage: Stage,
                    train_config: ml_collections.ConfigDict) -> Callable:
  """(state, batch) -> (state, metrics): gradient accumulation, one optimizer update unless
  the guard refuses it (lm/train/guard.py: non-finite values, loss spikes). Only
  `state.params` is differentiated; `state.frozen` is read as it is."""
  schedule = optim.learning_rate_schedule(train_config)
  accum = train_config.grad_accum
  guard_args = dict(spike_sigma=train_config.spike_sigma, spike_window=train_config.spike_window,
                    stop=train_config.on_nonfinite == "stop")

  def apply(params, tokens, **kwargs):
    return model.apply({"params": params}, tokens, **kwargs)

  grad_fn = jax.grad(lambda p, f, b: stage.loss(apply, p, f, b), has_aux=True)

  def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array]):
    if accum == 1:
      grads, sums = grad_fn(state.params, state.frozen, batch)
    else:
      # Micro-batch i takes rows i, i + accum, ...: every device keeps an equal share.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1),
          batch)  # [A, B / A, T]
      zeros = jax.eval_shape(grad_fn, state.params, state.frozen,
                             jax.tree.map(lambda x: x[0], micro))
      zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), zeros)

      def add_micro_batch(total, micro_batch):
        return jax.tree.map(jnp.add, total, grad_fn(state.params, state.frozen,
                                                    micro_batch)), None

      (grads, sums), _ = jax.lax.scan(add_micro_batch, zeros, micro)
    weight = jnp.maximum(sums["weight"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)  # the mean over the whole batch
    averaged = {name: sums[name] / jnp.maximum(sums[by], 1.0)
                for name, by in stage.metric_weights.items()}
    grad_norm = optax.tree.norm(grads)
    ok, guard = guard_lib.check(state.guard, state.step, averaged["loss"], grad_norm,
                                **guard_args)

    def update(_):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return optax.apply_updates(state.params, updates), opt_state

    def refuse(_):  # the optimizer's counters advance, its moments stay
      _, opt_state = tx.update(grads, state.opt_state, state.params)
      return state.params, guard_lib.counters_only(opt_state, state.opt_state)

    params, opt_state = jax.lax.cond(ok, update, refuse, None)
    metrics = {"loss": averaged["loss"], "grad_norm": grad_norm, "lr": schedule(state.step),
               "skipped": 1.0 - ok.astype(jnp.float32),
               "skipped_updates": guard.skipped.astype(jnp.float32), **averaged}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         guard=guard), metrics

  return train_step


def jit_train_step(setup: "Setup", tx: optax.GradientTransformation | None = None,
                   train_config: ml_collections.ConfigDict | None = None) -> Callable:
  """The train step of `make_train_step`, jitted with the state's and the batch's shardings
  and the state donated; `tx` and `train_config` default to the run's (PPO counts its
  schedule in minibatch updates, not steps)."""
  train_config = setup.config.train if train_config is None else train_config
  return jax.jit(make_train_step(setup.model, setup.tx if tx is None else tx, setup.stage,
                                 train_config),
                 in_shardings=(setup.shardings, setup.data_sharding),
                 out_shardings=(setup.shardings, rules_lib.replicated(setup.mesh)),
                 donate_argnums=(0,))


def make_eval_step(model: nn.Module, stage: Stage) -> Callable:
  """(params, frozen, batch) -> the stage's evaluation sums for one batch."""
  def eval_step(params, frozen, batch):
    return stage.eval_sums(lambda p, t, **kw: model.apply({"params": p}, t, **kw), params,
                           frozen, batch)
  return eval_step


def evaluate(eval_step: Callable, state: state_lib.TrainState, eval_batches: list,
             eval_set: Any, stage: Stage) -> dict[str, float]:
  """The stage's metrics from the sums over every held-out batch (`eval_set`: what they
  hold, e.g. the bytes of their text for bits per byte)."""
  totals: dict[str, float] = {}
  for batch in eval_batches:
    for name, value in jax.device_get(eval_step(state.params, state.frozen, batch)).items():
      totals[name] = totals.get(name, 0.0) + float(value)
  return stage.eval_metrics(totals, eval_set)


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


@dataclasses.dataclass
class Setup:
  """Everything a run needs before its state exists, checked against the config."""
  config: ml_collections.ConfigDict   # init_from resolved
  stage: Stage
  tokenizer: Any
  model_config: ModelConfig
  model: nn.Module
  mesh: Mesh
  rules: rules_lib.Rules
  source: sources.Source
  tx: optax.GradientTransformation
  abstract_state: state_lib.TrainState
  shardings: state_lib.TrainState
  model_shardings: Any                 # the whole model's, before the stage splits it
  imported_params: Any                 # abstract: what `init_from` holds (a Decoder's tree)
  data_sharding: NamedSharding
  rows: slice                          # this process's rows of each global batch
  config_json: dict                    # saved in every checkpoint

  def to_global(self, batch: dict) -> dict[str, jax.Array]:
    batch_size = self.config.train.batch_size
    return {k: jax.make_array_from_process_local_data(self.data_sharding, v,
                                                      (batch_size, *v.shape[1:]))
            for k, v in batch.items()}

  def train_batches(self, seed: int):
    return self.stage.train_batches(self.source.train, self.config, self.rows, seed)


def set_up(config: ml_collections.ConfigDict, workdir: str, stage_type: StageType) -> Setup:
  """Everything that can fail on bad input fails here, before compiling."""
  if config.init_from:  # the import fixes model.* and data.tokenizer (saved in config.json)
    config = init_from_lib.resolve(config)
  t = config.train
  tokenizer = tokenizer_lib.get(config.data.tokenizer)
  stage = stage_type(config, tokenizer)
  model_config = config_lib.model_config(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = rules_lib.make_rules(config.mesh.rules)
  config_lib.validate(config, model_config, tokenizer.vocab_size, dict(mesh.shape))
  model = stage.make_model(model_config)
  rules_lib.check_divisible(state_lib.abstract_boxed_params(model), dict(mesh.shape), rules)
  source = sources.open_source(config.data, config_lib.data_fields(config, stage),
                               check=getattr(stage, "check_record", None))
  tx = optim.make_optimizer(t)
  abstract_state, shardings = state_lib.state_shardings(model, tx, mesh, rules, stage.partition,
                                                        model_config.frozen_dtype)
  _, model_shardings = state_lib.abstract_params_and_shardings(model, mesh, rules)
  imported_params = nn.unbox(state_lib.abstract_boxed_params(Decoder(model_config))
                             ) if config.init_from else None
  workdir_lib.prepare(workdir, state_lib.count_bytes(abstract_state))  # local or gs://
  data_sharding = rules_lib.batch_sharding(mesh)
  return Setup(config=config, stage=stage, tokenizer=tokenizer, model_config=model_config,
               model=model, mesh=mesh, rules=rules, source=source, tx=tx,
               abstract_state=abstract_state, shardings=shardings,
               model_shardings=model_shardings, imported_params=imported_params,
               data_sharding=data_sharding,
               rows=rules_lib.process_rows(data_sharding, t.batch_size),
               config_json=json.loads(config.to_json_best_effort()))


def load_init_from(setup: Setup) -> Any:
  """The model's parameter tree at step 0: what `init_from` holds (a Decoder's tree) placed
  as the stage's model places it, under the stage's `pretrained_key` (a reward model's
  "decoder") where it names one; the model's other parameters (a head, LoRA adapters)
  freshly initialised from the seed (`params_with`). A stage with `import_leaf` (QLoRA) has
  each leaf replaced as it is read (quantized)."""
  config, key = setup.config, getattr(setup.stage, "pretrained_key", None)
  shardings = setup.model_shardings if key is None else setup.model_shardings[key]
  loaded = init_from_lib.load_params(config.init_from, setup.model_config,
                                     state_lib.subtree(shardings, setup.imported_params),
                                     getattr(setup.stage, "import_leaf", None))
  if key is not None:
    loaded = {key: loaded}
  params = state_lib.params_with(setup.model, jax.random.key(config.seed), loaded,
                                 setup.model_shardings)
  load_extra = getattr(setup.stage, "load_extra", None)  # e.g. a value model's start
  return params if load_extra is None else load_extra(params)


def start_params(setup: Setup) -> Any:
  """The model's whole parameter tree at step 0: `init_from`'s, else initialised from the
  seed (as `create_train_state` does)."""
  if setup.config.init_from:
    return load_init_from(setup)
  return jax.jit(lambda key: nn.unbox(state_lib.init_params(setup.model, key)),
                 out_shardings=setup.model_shardings)(jax.random.key(setup.config.seed))


class StartModel:
  """Runs `fn(apply, params, batch)` with the model at step 0 (built on first use) on this
  process's rows of a global batch, and returns the result on the host, whole: a stage's
  one-off work before training (`Stage.prepare`, e.g. DPO's precomputed reference)."""

  def __init__(self, setup: Setup):
    self.setup = setup
    self._params = None
    self._compiled: dict[Callable, Callable] = {}

  def __call__(self, fn: Callable, batch: dict) -> Any:
    if self._params is None:
      self._params = start_params(self.setup)
    if fn not in self._compiled:
      model = self.setup.model
      self._compiled[fn] = jax.jit(
          lambda p, b: fn(lambda q, t, **kw: model.apply({"params": q}, t, **kw), p, b),
          out_shardings=rules_lib.replicated(self.setup.mesh))
    return jax.device_get(self._compiled[fn](self._params, self.setup.to_global(batch)))


def initial_state(setup: Setup, workdir: str, manager) -> tuple[state_lib.TrainState, Any, bool]:
  """(state, training batches, restored): the newest checkpoint in `workdir` with its data
  position, else step 0 from `init_from`'s parameters or a fresh initialisation."""
  config, stage = setup.config, setup.stage
  prepare = getattr(stage, "prepare", None)
  if prepare is not None:  # before its batches exist; it may keep what it makes in `workdir`
    prepare(setup, workdir, StartModel(setup))
  train_data = setup.train_batches(config.seed)
  # Checkpoints hold the state without its frozen tree, which is written once (save_frozen).
  restored = checkpoint_lib.restore_latest(manager, setup.abstract_state.replace(frozen=None),
                                           setup.shardings.replace(frozen=None),
                                           train_data.shards,
                                           workdir_lib.resume_check(setup.config_json, workdir))
  key = jax.random.key(config.seed)
  if restored is None and config.init_from:  # the whole tree, before the stage splits it
    params = load_init_from(setup)
    state = state_lib.train_state_from_params(setup.tx, params, setup.shardings, stage.partition,
                                              setup.model_config.frozen_dtype)
  elif restored is None:
    state = state_lib.create_train_state(setup.model, setup.tx, key, setup.shardings,
                                         stage.partition, setup.model_config.frozen_dtype)
  else:
    state, data_state = restored
    state = state.replace(frozen=None if setup.abstract_state.frozen is None else
                          checkpoint_lib.restore_frozen(workdir, setup.abstract_state.frozen,
                                                        setup.shardings.frozen))
  if restored is None and state.frozen is not None:
    checkpoint_lib.save_frozen(workdir, state.frozen)
  if config.lora.rank and config.init_from:  # adapters: the base they belong to (base.json)
    if restored is None and jax.process_index() == 0:
      base_ref.write(workdir, config.init_from)
    elif restored is not None:
      base_ref.check(workdir)
  if jax.process_index() == 0:  # only now: a config the checkpoints refused must not replace theirs
    save_config(config, workdir)
    tokenizer_lib.save_chat_template(setup.tokenizer, workdir)  # what lm chat / serve render
  if restored is not None:  # continue the input streams where the checkpoint left them
    train_data = pipeline_lib.resume(train_data, data_state, int(jax.device_get(state.step)),
                                     config, setup.train_batches)
  return state, train_data, restored is not None


def tokens_per_step(stage: Stage | StageType, train_config: ml_collections.ConfigDict) -> int:
  """Tokens in one training batch: a pair stage's example is two rows (chosen, rejected),
  and tokens/s and MFU count both."""
  return train_config.batch_size * getattr(stage, "rows_per_example", 1) * train_config.seq_len


def run_steps(setup: Setup, workdir: str, state: state_lib.TrainState, train_data, manager,
              restored: bool) -> dict[str, Any]:
  """The step loop, from the state's step to `train.steps`; returns the last metrics."""
  config, stage, t = setup.config, setup.stage, setup.config.train
  is_main = jax.process_index() == 0
  shardings, mesh = setup.shardings, setup.mesh
  if hasattr(stage, "make_step"):  # RL: rollouts and host rewards around its updates
    train_step = stage.make_step(setup, workdir)
  else:
    train_step = jit_train_step(setup)
  if hasattr(stage, "make_eval_step"):
    eval_step = stage.make_eval_step(setup)
  else:
    eval_step = jax.jit(make_eval_step(setup.model, stage),
                        in_shardings=(shardings.params, shardings.frozen, setup.data_sharding))
  eval_set = stage.eval_set(setup.source.eval, config, setup.rows)
  eval_data = [setup.to_global(b) for b in eval_set.batches]
  tokens = tokens_per_step(stage, t)
  flops_per_step = state_lib.flops_per_token(setup.model_config, t.seq_len) * tokens
  peak_flops = metrics_lib.peak_flops_per_device(t.peak_flops) * mesh.size

  start_step, skipped = (int(x) for x in jax.device_get((state.step, state.guard.skipped)))
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main, start_step=start_step)
  progress = metrics_lib.ProgressLine(t.steps, enabled=is_main)
  num_params = state_lib.count_params(setup.abstract_state.params)
  num_frozen = state_lib.count_params(setup.abstract_state.frozen)
  progress.message(f"{'Resuming from checkpoint at' if restored else 'Starting at'} step "
                   f"{start_step} of {t.steps}: {num_params / 1e6:.2f}M parameters"
                   + (f" (+{num_frozen / 1e6:.2f}M frozen)" if num_frozen else "")
                   + f", mesh {dict(mesh.shape)}, workdir {workdir}"
                   + (f", from {config.init_from}" if config.init_from and not restored else ""))
  logging.info("Data: %s", setup.source.description)
  if setup.source.entropy_rate is not None:
    progress.message(f"The source's entropy rate, the lowest reachable loss: "
                     f"{setup.source.entropy_rate:.4f} nats/token")
  last_metrics: dict[str, Any] = {"step": start_step}
  timer_step, timer_start = start_step, time.perf_counter()
  log_step = start_step
  profiler = profile_lib.Profiler(t.profile_steps, workdir)

  with preemption.StopRequest() as stop_request:
    for step in range(start_step, t.steps):
      batch = setup.to_global(next(train_data))
      profiler.before_step(step)
      state, step_metrics = train_step(state, batch)
      profiler.after_step(step, (state, step_metrics))
      state = stage.between_steps(state, step + 1)
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
        host_metrics["tokens_per_sec"] = tokens / seconds_per_step
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
        eval_metrics = evaluate(eval_step, state, eval_data, eval_set, stage)
        writer.write(done, eval_metrics)
        progress.message(f"eval at step {done}: " + " | ".join(
            f"{name.removeprefix('eval_')} {value:.6g}" for name, value in eval_metrics.items()))
        last_metrics.update(eval_metrics)
        timer_step, timer_start = done, time.perf_counter()  # keep eval out of tokens/s

      if done % t.checkpoint_every == 0 or done == t.steps or stop:
        # Async: training waits only for the device-to-host copy, measured here.
        save_start = time.perf_counter()
        checkpoint_lib.save(manager, state.replace(frozen=None), train_data.get_state(),
                            setup.config_json,
                            force=stop)
        writer.write(done, {"checkpoint_blocking_seconds": time.perf_counter() - save_start})

      if stop:
        progress.message(f"Stopped at step {done} as asked: checkpoint saved in {workdir}; "
                         "run the same command to resume")
        last_metrics["stopped_early"] = True
        break

  profiler.close()
  progress.close()
  writer.close()
  if setup.source.entropy_rate is not None:
    last_metrics["entropy_rate"] = setup.source.entropy_rate
  return last_metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stage_type: StageType) -> dict[str, Any]:
  """Trains `config` with `stage_type` (a Stage class, e.g. `lm.stages.get(config.stage)`)
  in `workdir`, resuming from its newest checkpoint; returns the last metrics."""
  setup = set_up(config, workdir, stage_type)
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    manager = checkpoint_lib.make_manager(workdir, config.train.keep_checkpoints)
    state, train_data, restored = initial_state(setup, workdir, manager)
    last_metrics = run_steps(setup, workdir, state, train_data, manager, restored)
    manager.wait_until_finished()
    manager.close()
    train_data.close()
  return last_metrics
