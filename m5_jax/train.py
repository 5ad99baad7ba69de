r"""The train binary: pretraining (and classification fine-tuning) on a device mesh.

  python -m m5_jax.train --config configs/m5_mmt.py:size=tiny,runlocal --workdir /tmp/m5 \
      [--config.optimizer.lr=3e-4 ...] [--verbosity=1]

The console gets one line per logged step (step, loss, examples/s, ETA); every metric
is in <workdir>/metrics.jsonl and TensorBoard, and on the console with --verbosity=1.

Read top to bottom: the task (what a step computes), the train step (pure,
jitted, donated state), then the loop (resume, log, checkpoint, preemption).

  * State = {'step', 'params', 'opt_state'}: fp32 parameters (compute dtype is
    config.model.dtype), created already sharded on the mesh (m5_jax/sharding.py).
  * rng of step s = fold_in(key(config.seed), s): a resumed run draws the same
    masks and dropout as an uninterrupted one, and the input pipeline yields the
    same batch at step s, so resuming is bitwise exact.
  * Gradient accumulation (config.num_microbatches > 1): the global batch is
    masked once, split into microbatches, and the gradient of
    sum_k w_k * N_k / D_k is accumulated with N_k summed over microbatches and D_k
    the *global* denominators (counted first; that pass reads only masks, so XLA
    drops the model compute from it). Masked-modeling terms are therefore exact;
    contrastive terms see the negatives of their microbatch.
  * A non-finite loss or gradient never updates the state; config.nonfinite =
    'stop' ends the run with an error naming the step (before any checkpoint
    after it is written), 'skip' goes on.
  * SIGTERM (preemption): save at the current step, exit 0; a restart resumes. The
    handler is installed first, so this holds during start-up (restore, compile) too.
  * Start-up checks, before any data read or compile, each a one-line error: the
    config schema (config_lib.SCHEMA), the data build, split and tokenizer
    (`check_input`), the mesh and batch, a workdir held by another trainer
    (checkpointing.WorkdirLock), a checkpoint of another model. A damaged latest
    checkpoint is moved aside and the one before it restored.
  * After a failed checkpoint write the binary exits at once (`exit_promptly`), not
    after Orbax's background threads time out.
  * Nothing to train (total_steps=0, or start step >= total_steps): the state at
    the start step is checkpointed (a step-0 checkpoint of the initial, random
    weights for total_steps=0) without compiling a train step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import signal
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from m5_jax import batch as batch_lib
from m5_jax import checkpointing
from m5_jax import config_lib
from m5_jax import finetune
from m5_jax import flops as flops_lib
from m5_jax import init_from
from m5_jax import models
from m5_jax import objectives
from m5_jax import optimizer as optimizer_lib
from m5_jax import sharding
from m5_jax.input_checks import check_input

TASKS = ('pretrain', 'classification_finetune')


# ------------------------------------------------------------------------ the task


@dataclasses.dataclass(frozen=True)
class Task:
  """What one step computes. `prepare` runs once on the global batch (masking);
  `terms` on the prepared (micro)batch gives {name: (numerator, denominator)};
  `combine` weighs the terms into the scalar loss."""
  model: Any
  prepare: Callable[[Any, jax.Array], Any]
  terms: Callable[[Any, Any, jax.Array], dict]
  combine: Callable[[dict], jax.Array]


def make_task(config: ml_collections.ConfigDict) -> Task:
  if config.task == 'pretrain':
    model = models.build(config)

    def prepare(batch, rng):
      masked, targets = objectives.mask_batch(batch, rng, config)
      return {'masked': masked, 'targets': targets, 'batch': batch}

    def terms(params, inputs, rng):
      outputs = objectives.pretraining_outputs(model, {'params': params}, inputs['masked'],
                                               inputs['batch'], rng, config, inputs['targets'])
      return objectives.losses(outputs, inputs['targets'], config)

    return Task(model, prepare, terms, lambda t: objectives.total_loss(t, config))

  if config.task == 'classification_finetune':
    model = finetune.build(config)

    def terms(params, batch, rng):
      logits = model.apply({'params': params}, batch, train=True, rngs={'dropout': rng})
      return finetune.terms(logits, batch)

    combine = lambda t: sum(num / jnp.maximum(den, 1.0) for num, den in t.values())  # noqa: E731
    return Task(model, lambda batch, rng: batch, terms, combine)
  raise ValueError(f'unknown config.task {config.task!r}; expected one of {TASKS}')


# ------------------------------------------------------------------------ the step


def split_microbatches(tree, num: int, mesh):
  """[B, ...] -> [num, B/num, ...]; microbatch i = rows i, i+num, ... so that every
  device holds an equal part of each microbatch."""
  constraint = NamedSharding(mesh, P(None, sharding.BATCH_AXES))

  def split(x):
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, constraint)

  return jax.tree.map(split, tree)


def make_train_step(config, task: Task, tx, schedule, mesh, param_shardings=None):
  """(state, global batch) -> (state, metrics). `param_shardings` (default: from the
  config's rules) tell where the parameters live; the forward pass uses them
  gathered over 'fsdp' (m5_jax/sharding.py says why this is also a correctness
  requirement)."""
  seed_key = jax.random.key(config.seed)
  num_micro = config.num_microbatches
  if param_shardings is None:
    rules = sharding.axis_rules(config.sharding)
    param_shardings = sharding.state_shardings(init_state_fn(config, task, tx), mesh,
                                               rules)[1]['params']

  def task_terms(params, inputs, rng):
    return task.terms(sharding.gather_for_compute(params, param_shardings), inputs, rng)

  def train_step(state, batch):
    step, params = state['step'], state['params']
    prepare_rng, dropout_rng = jax.random.split(jax.random.fold_in(seed_key, step))
    inputs = task.prepare(batch, prepare_rng)

    if num_micro == 1:
      def loss_fn(p):
        terms = task_terms(p, inputs, dropout_rng)
        return task.combine(terms), terms
      (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    else:
      micro = split_microbatches(inputs, num_micro, mesh)
      rngs = jax.random.split(dropout_rng, num_micro)
      # Pass 1: the global denominators (they depend on masks only).
      dens = jax.lax.map(lambda xs: {k: d for k, (_, d) in task_terms(params, *xs).items()},
                         (micro, rngs))
      dens = jax.tree.map(lambda d: d.sum(0), dens)

      # Pass 2: sum the microbatches' gradients of sum_k w_k N_k,mb / D_k.
      def accumulate(carry, xs):
        def loss_fn(p):
          terms = task_terms(p, *xs)
          return task.combine({k: (n, dens[k]) for k, (n, _) in terms.items()}), terms
        (_, terms), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        g = jax.lax.with_sharding_constraint(g, param_shardings)  # accumulate FSDP-split
        grads, nums = carry
        nums = {k: nums[k] + n for k, (n, _) in terms.items()}
        return (jax.tree.map(jnp.add, grads, g), nums), None

      zero_nums = {k: jnp.zeros((), jnp.float32) for k in dens}
      (grads, nums), _ = jax.lax.scan(
          accumulate, (jax.tree.map(jnp.zeros_like, params), zero_nums), (micro, rngs))
      terms = {k: (nums[k], dens[k]) for k in dens}
      loss = task.combine(terms)

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply_update(params, opt_state):
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    # A non-finite step keeps the state as it was (config.nonfinite='skip'). A cond,
    # not a where(finite, new, old) over the state: the select reads each donated
    # buffer twice, so XLA copied both Adam moments of every parameter each step
    # (8% of the small model's profiled thunk time, 2% of its step, 5% of its host
    # memory; benchmarks/RESULTS.md section 7).
    params, opt_state = jax.lax.cond(finite, apply_update, lambda p, o: (p, o),
                                     params, state['opt_state'])
    new_state = {'step': step + 1, 'params': params, 'opt_state': opt_state}
    metrics = {'loss': loss, 'grad_norm': grad_norm, 'param_norm': optax.global_norm(params),
               'lr': schedule(step), 'skipped': 1.0 - finite.astype(jnp.float32)}
    for name, (num, den) in terms.items():
      metrics[f'loss/{name}'] = num / jnp.maximum(den, 1.0)
      metrics[f'count/{name}'] = den
    return new_state, metrics

  return train_step


def init_state_fn(config, task: Task, tx) -> Callable[[], dict]:
  """() -> the initial (boxed) train state; m5_jax.sharding places it on the mesh."""
  def init():
    rng = jax.random.key(config.seed)
    variables = task.model.init({'params': rng, 'dropout': rng},
                                batch_lib.zeros_batch(config, 2), train=False)
    params = variables['params']
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  return init


@dataclasses.dataclass(frozen=True)
class StepSetup:
  """What a train step runs on, built once (`make_step_setup`) for the train binary,
  m5_jax/tools/fit.py and benchmarks/train_step.py: the mesh and axis rules, the task,
  the optimizer, the state's init function, abstract shapes and shardings."""
  config: ml_collections.ConfigDict
  mesh: Any
  rules: Any
  task: Task
  tx: Any
  schedule: Callable[[Any], Any]
  init_fn: Callable[[], dict]
  abstract: Any  # the unboxed state's shapes
  shardings: Any  # the state's NamedShardings

  def activations(self):
    """The trace-time context of the model (logical rules, the mesh when constraints act)."""
    return sharding.activation_context(self.mesh, self.rules,
                                       self.config.sharding.activation_constraints)

  def abstract_state(self) -> Any:
    """ShapeDtypeStructs of the state, carrying its shardings (what a restore produces)."""
    return sharding.abstract_with_shardings(self.abstract, self.shardings)

  def init_state(self) -> dict:
    """The initial state, created already sharded on the mesh."""
    with self.activations():
      return sharding.init_sharded(self.init_fn, self.shardings)

  def batch_shapes(self) -> Any:
    """Abstract global batch (for compiling before the first batch arrives)."""
    bsh = sharding.batch_sharding(self.mesh)
    size = self.config.input.batch_size
    make = lambda s: ({k: make(v) for k, v in s.items()} if isinstance(s, dict)  # noqa: E731
                      else jax.ShapeDtypeStruct((size, *s[0]), s[1], sharding=bsh))
    return make(batch_lib.batch_spec(self.config))

  def train_step(self) -> Callable:
    """The pure (state, batch) -> (state, metrics) step (built on demand: a run with
    nothing to train never builds one)."""
    return make_train_step(self.config, self.task, self.tx, self.schedule, self.mesh,
                           self.shardings['params'])

  def lower(self, state=None, batch=None) -> tuple[Any, Any]:
    """(traced, lowered) jitted step with donated state, on `state` and `batch` (default:
    their abstract shapes)."""
    step_fn = jax.jit(self.train_step(), in_shardings=(self.shardings,
                                                       sharding.batch_sharding(self.mesh)),
                      out_shardings=(self.shardings, None), donate_argnums=(0,))
    with self.activations():
      traced = step_fn.trace(self.abstract_state() if state is None else state,
                             self.batch_shapes() if batch is None else batch)
      return traced, traced.lower()


def make_step_setup(config, mesh, total_steps: int, warmup_steps: int) -> StepSetup:
  """The task, optimizer (schedule over `total_steps`) and state shapes and shardings of
  `config` on `mesh`; nothing is computed (jax.eval_shape)."""
  rules = sharding.axis_rules(config.sharding)
  task = make_task(config)
  tx, schedule = optimizer_lib.make_optimizer(config, total_steps, warmup_steps)
  init_fn = init_state_fn(config, task, tx)
  with sharding.activation_context(mesh, rules, config.sharding.activation_constraints):
    abstract, shardings = sharding.state_shardings(init_fn, mesh, rules)
  return StepSetup(config, mesh, rules, task, tx, schedule, init_fn, abstract, shardings)


# ------------------------------------------------------------------------ the loop


def initialize_distributed() -> None:
  """jax.distributed.initialize when launched multi-process; a no-op on one host.

  Explicit: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (and
  optionally JAX_LOCAL_DEVICE_IDS). Auto-detected (SLURM, multi-worker TPU, MPI):
  M5_JAX_DISTRIBUTED=1 (set by launch/gpu_slurm.sbatch) or TPU_WORKER_HOSTNAMES
  listing several workers.
  """
  env = os.environ
  if jax.distributed.is_initialized():
    return
  if env.get('JAX_COORDINATOR_ADDRESS'):
    local = env.get('JAX_LOCAL_DEVICE_IDS')
    jax.distributed.initialize(
        coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(env['JAX_NUM_PROCESSES']), process_id=int(env['JAX_PROCESS_ID']),
        local_device_ids=[int(i) for i in local.split(',')] if local else None)
  elif env.get('M5_JAX_DISTRIBUTED') == '1' or ',' in env.get('TPU_WORKER_HOSTNAMES', ''):
    jax.distributed.initialize()


class PreemptionWatcher:
  """SIGTERM sets a flag; all processes agree on it (any process signalled => stop).

  Installed first thing, so that a SIGTERM during start-up (restore, compile) is also
  a preemption: the run saves its start step and exits 0 instead of dying with -15.
  `checkpointer` (set once it exists) adds the scheduler's preemption notices."""

  def __init__(self, checkpointer: checkpointing.Checkpointer | None = None):
    self.signalled, self.checkpointer = False, checkpointer
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: will save a checkpoint at the current step and exit')
    self.signalled = True

  def should_stop(self, step: int) -> bool:
    stop = self.signalled or bool(self.checkpointer and self.checkpointer.reached_preemption(step))
    if jax.process_count() > 1:
      stop = bool(np.max(multihost_utils.process_allgather(np.int32(stop))))
    return stop

  def close(self):
    signal.signal(signal.SIGTERM, self._previous)


def create_input(config, mesh):
  if config.input.dataset == 'synthetic':
    from m5_jax import synthetic_input  # pylint: disable=g-import-not-at-top
    return synthetic_input.SyntheticIterator(config, mesh, config.input.batch_size, config.seed,
                                             num_classes=config.get('finetune', {}).get(
                                                 'num_classes', 16))
  from m5_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.create_iterator(config, config.input.train_split, mesh, train=True)


_COMPILED: dict[str, Any] = {}


def compile_cached(lowered) -> Any:
  """`lowered.compile()`, reused when this process already compiled the same program
  (identical StableHLO, shardings and donation included): a run restarted in the
  same process (notebooks, the preemption tests) skips XLA compilation. In memory
  only: JAX's persistent cache is not used for the train step (see
  tests/train_fixtures.py on CPU executables loaded from it)."""
  key = hashlib.sha256(lowered.as_text().encode()).hexdigest()
  if key not in _COMPILED:
    _COMPILED[key] = lowered.compile()
  return _COMPILED[key]


def _save_without_training(checkpointer, step: int, state, data) -> dict:
  """Nothing to train (total_steps=0, or a finished run restarted): make sure `step`
  is checkpointed (total_steps=0 gives a step-0 checkpoint of the initial state,
  e.g. random weights to evaluate) without compiling a train step."""
  try:
    if step not in checkpointer.all_steps():
      checkpointer.save(step, state, data.get_state(), force=True)
      logging.info('nothing to train: saved the state at step %d to %s', step,
                   checkpointer.directory)
    else:
      logging.info('nothing to train: step %d is already checkpointed in %s', step,
                   checkpointer.directory)
  finally:
    checkpointer.close()
  return state


def _durations_in_steps(config, data) -> tuple[int, int, int, int]:
  """(total, warmup, checkpoint every, log every) in steps; the config may give them in
  epochs or examples (config_lib.to_steps), counted on `data`'s train split."""
  durations = dict(batch_size=config.input.batch_size, examples_per_epoch=getattr(
      getattr(data, 'host', data), 'num_examples', None) or config.input.get('num_train_examples'))
  total_steps = config_lib.to_steps(config, 'total', **durations)
  warmup_steps = config_lib.to_steps(config.schedule, 'warmup', **durations, default=0)
  checkpoint_every = config_lib.to_steps(config.checkpoint, 'every', **durations,
                                         default=total_steps)
  log_every = config_lib.to_steps(config.log, 'every', **durations, default=50)
  checkpoint_every = max(checkpoint_every or total_steps, 1)  # 0: at the end (and preemption)
  return total_steps, warmup_steps, checkpoint_every, max(log_every, 1)


def _restore_or_init(config, setup: StepSetup, checkpointer, data,
                     workdir: str) -> tuple[int, dict]:
  """(start step, state): the latest checkpoint in `workdir` (and `data`'s position in
  it), else step 0 with the initial state, or config.init_from's parameters."""
  try:
    start_step, state, data_state = checkpointer.restore_latest(setup.abstract_state(), workdir)
  except BaseException:
    checkpointer.close()
    raise
  if start_step is not None:
    logging.info('resuming from %s step %d', checkpointer.directory, start_step)
    data.restore(data_state)
    return start_step, state
  state = setup.init_state()
  # A public checkpoint's format counts even without a path (its loader says what is missing).
  if config.init_from.path or config.init_from.get('format', 'm5_jax') != 'm5_jax':
    state = init_from.load_into_state(config, state, setup.shardings)
  return 0, state


def train(config: ml_collections.ConfigDict, workdir: str,
          watcher: PreemptionWatcher | None = None, verbose: bool = False) -> dict:
  """Trains until config's total duration (resuming from `workdir`); returns the state.

  Holds the workdir's lock (checkpointing.WorkdirLock) throughout; `watcher` (default:
  one installed here) turns SIGTERM into a save and a clean return. `verbose`: log every
  metric of a logged step, not just step, loss, examples/s and ETA.
  """
  own_watcher = watcher is None
  watcher = watcher or PreemptionWatcher()
  try:
    check_input(config)  # data_dir, split, tokenizer: one line, before any data read
    checkpointing.check_writable(workdir)  # fail before compiling, not at the first save
    with checkpointing.WorkdirLock(workdir):
      return _train(config, workdir, watcher, verbose)
  finally:
    if own_watcher:
      watcher.close()


def _train(config: ml_collections.ConfigDict, workdir: str, watcher: PreemptionWatcher,
           verbose: bool = False) -> dict:
  mesh = sharding.make_mesh(config.mesh)
  sharding.axis_rules(config.sharding)  # a bad preset: one-line error before any data read
  batch_size = config.input.batch_size
  sharding.process_batch_size(batch_size, mesh)  # validates divisibility (one-line error)
  sharding.log_mesh(mesh)
  data = create_input(config, mesh)
  total_steps, warmup_steps, checkpoint_every, log_every = _durations_in_steps(config, data)

  setup = make_step_setup(config, mesh, total_steps, warmup_steps)
  logging.info('state sharding: %s', sharding.describe(setup.shardings))

  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  watcher.checkpointer = checkpointer
  start_step, state = _restore_or_init(config, setup, checkpointer, data, workdir)
  if jax.process_index() == 0:
    config_lib.save_workdir_config(config, workdir)
  if start_step >= total_steps:
    return _save_without_training(checkpointer, start_step, state, data)
  if watcher.should_stop(start_step):  # SIGTERM during start-up: no compile, exit 0
    logging.warning('preempted during start-up: making sure step %d is saved; exiting',
                    start_step)
    return _save_without_training(checkpointer, start_step, state, data)

  logging.info('compiling the train step...')
  compile_start = time.perf_counter()
  traced, lowered = setup.lower()
  compiled = compile_cached(lowered)
  logging.info('compiled in %.0f s', time.perf_counter() - compile_start)
  # Imported here, not at the top: clu's writers import TensorFlow, whose import-time
  # banners on stderr would otherwise come before a bad flag's one-line error.
  from m5_jax import train_logging  # pylint: disable=g-import-not-at-top
  # Model FLOPs per device from the step's jaxpr (scan-aware; XLA's cost analysis
  # counts a model.scan_layers stack once): m5_jax/flops.py.
  flops = flops_lib.jaxpr_matmul_flops(traced.jaxpr) / jax.device_count() or None
  logger = train_logging.MetricLogger(
      workdir, total_steps=total_steps, batch_size=batch_size, flops_per_step=flops,
      peak_flops_per_device=config.log.peak_flops_per_device, verbose=verbose)
  profiler = train_logging.Profiler(workdir, *config.log.profile_steps)
  logging.info('training steps %d..%d (%d warmup), %s FLOPs/step/device', start_step,
               total_steps, warmup_steps, f'{flops:.3g}' if flops else 'unknown')

  def check_and_log(step: int, metrics) -> None:
    """Host side of step `step` (called one step late so the devices stay busy)."""
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      if config.nonfinite == 'stop':
        raise FloatingPointError(
            f'non-finite loss ({loss}) at step {step}; the update was not applied. Set '
            f"--config.nonfinite=skip to skip such steps, or lower optimizer.lr")
      logging.warning('non-finite loss at step %d: update skipped', step)
    if step % log_every == 0 or step == total_steps:
      logger.write(step, jax.device_get(metrics))

  logger.start(start_step)
  pending = None
  try:
    for step in range(start_step, total_steps):
      if watcher.should_stop(step):
        if pending:
          check_and_log(*pending)
        checkpointer.wait()  # a periodic save of this very step may be in flight
        if step not in checkpointer.all_steps():
          checkpointer.save(step, state, data.get_state(), force=True)
          checkpointer.wait()
        logging.warning('preempted: saved step %d to %s; exiting', step, checkpointer.directory)
        return state
      profiler.step(step)
      wait_start = time.perf_counter()
      batch = next(data)  # time blocked on the input: perf/input_wait_* (a stall shows)
      logger.input_wait(time.perf_counter() - wait_start)
      state, metrics = compiled(state, batch)
      if pending:
        check_and_log(*pending)
      pending = (step + 1, metrics)
      if (step + 1) % checkpoint_every == 0 or step + 1 == total_steps:
        check_and_log(*pending)  # never checkpoint past a non-finite step that must stop
        pending = None
        checkpointer.save(step + 1, state, data.get_state(), force=True)
    if pending:
      check_and_log(*pending)
    logging.info('trained to step %d: checkpoints in %s, metrics in %s and tensorboard/',
                 total_steps, checkpointer.directory,
                 os.path.join(workdir, train_logging.METRICS_FILE))
  finally:
    profiler.close()
    checkpointer.close()
    logger.close()
  return state


def _quiet_libraries(record: logging.LogRecord) -> bool:
  """At --verbosity=0 the console keeps this project's lines (root logger) and the
  libraries' warnings; their INFO lines (Orbax's save steps, TFDS, JAX's backend
  probing) and deprecation notices (TFDS's `FeatureConnector.dtype`) go."""
  if record.name == 'root':
    return True
  return record.levelno >= logging.WARNING and 'deprecated' not in record.getMessage()


def main(argv) -> int:
  # force: an imported library already gave the root logger a WARNING-level handler,
  # which would silently drop the progress lines below.
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s',
                      force=True)
  own_handlers = list(logging.getLogger().handlers)
  watcher = PreemptionWatcher()  # first: a SIGTERM from here on is a clean preemption
  try:
    try:
      # --verbosity=1: every metric of a logged step and the libraries' INFO lines.
      config, flags = config_lib.parse_command_line(argv, {'workdir': '', 'verbosity': 0},
                                                    __doc__)
      if not flags['workdir']:
        raise config_lib.ConfigError('--workdir DIR is required')
    except config_lib.ConfigError as e:
      config_lib.exit_with(e, 'm5_jax.train')
    if flags['verbosity'] < 1:
      for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_libraries)
    initialize_distributed()
    try:
      train(config, flags['workdir'], watcher, verbose=flags['verbosity'] >= 1)
    except (FloatingPointError, config_lib.ConfigError, checkpointing.CheckpointWriteError,
            checkpointing.UnreadableCheckpointError, checkpointing.WorkdirLockedError) as e:
      print(f'm5_jax.train: error: {e}', file=sys.stderr)
      return 1
  finally:
    watcher.close()
    # An in-process caller (a test) must not keep a handler on a stream it will close.
    for handler in own_handlers:
      logging.getLogger().removeHandler(handler)
  return 0


def exit_promptly(code: int) -> int:
  """`code`; after an error (code != 0), when threads that would block the interpreter's exit are still alive
  (Orbax's async-save threads after a failed write wait minutes in threading._shutdown),
  flush the logs and end the process now with `code`."""
  import threading  # pylint: disable=g-import-not-at-top
  blocking = [t for t in threading.enumerate()
              if t is not threading.main_thread() and t.is_alive() and not t.daemon]
  if not code or not blocking:
    return code
  logging.warning('exiting now; not waiting for %d background thread(s): %s', len(blocking),
                  ', '.join(t.name for t in blocking[:5]))
  logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def run_main(argv) -> None:
  """What `python -m m5_jax.train` runs: main, then `exit_promptly` (after an error or a
  crash too, whose traceback is printed first)."""
  try:
    code = main(argv)
  except SystemExit:
    raise
  except BaseException:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    code = 1
  sys.exit(exit_promptly(code or 0) or 0)


if __name__ == '__main__':
  run_main(sys.argv[1:])
