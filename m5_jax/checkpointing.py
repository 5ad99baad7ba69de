"""Orbax checkpoints of the train state and the input iterator state.

Layout: `<workdir>/checkpoints/<step>/{state,data}`; `state` is the train-state
pytree ({'step', 'params', 'opt_state'}), `data` the input iterator's small JSON
state dict, so a resumed run reads exactly the batches it would have read.

  * Saves are async (`config.checkpoint.async_save`); the keep policy keeps the
    last `keep` checkpoints plus every step divisible by `keep_every`.
  * Orbax writes a step into a temporary directory and renames it when every
    process has finished (atomic finalize), so a process killed mid-save leaves
    no half-written step that `list_steps` or a restore would pick
    (tests/test_checkpointing.py kills a saving process to check this).
  * A failed write (disk full, read-only directory; async ones surface at the
    next save, wait or close) raises CheckpointWriteError, one line naming the
    step and the last complete checkpoint; the failed step stays unfinalized.
  * Restores go through an abstract state that carries the *current* shardings:
    a checkpoint saved on any mesh or device count restores onto any other.
  * `init_params_from` copies matching parameters from another run's checkpoint
    (fine-tuning), selected by include/exclude regexes on '/'-joined paths.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from m5_jax import optimizer as optimizer_lib

CHECKPOINT_DIR = 'checkpoints'


class CheckpointWriteError(RuntimeError):
  """A checkpoint (or the workdir) could not be written: disk full, read-only, ...
  Its message is one line; the step being written stays unfinalized, so it is
  never listed or restored."""


def _one_line(error: BaseException, head: int = 80, tail: int = 220) -> str:
  """The error on one line; long ones (tensorstore) keep their end, where the OS
  cause is ('... File too large [os_error_code=27]')."""
  text = ' '.join(str(error).split()) or type(error).__name__
  return text if len(text) <= head + tail else f'{text[:head]} ... {text[-tail:]}'


def check_writable(workdir: str) -> None:
  """Creates `workdir` and writes a probe file there; raises CheckpointWriteError."""
  try:
    os.makedirs(workdir, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix='.write_probe.', dir=workdir)  # unique per process
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise CheckpointWriteError(f'workdir {workdir} is not writable ({e.strerror or e}); '
                               'give a writable --workdir') from e


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
  return {'state': ocp.PyTreeCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()}


class Checkpointer:
  """The train binary's checkpoint manager: save, auto-resume, keep policy."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, *, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.get('keep', None) or None,
        keep_period=config.get('keep_every', None) or None,
        enable_async_checkpointing=bool(config.get('async_save', True)),
        save_interval_steps=1,  # the train loop decides when to save
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only,
    )
    self.directory = checkpoint_dir(workdir)
    self._writing: int | None = None   # the step of the last save started
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_item_handlers())

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Mapping[str, Any] | None = None, *,
           force: bool = False) -> bool:
    """Starts an (async) save of `state` and the iterator state at `step`. A failed
    write (this one, or the previous async one) raises CheckpointWriteError."""
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                              data=ocp.args.JsonSave(dict(data_state or {})))
    with self._write_errors():
      self.manager.wait_until_finished()  # the previous async save's error is its own
    self._writing = step
    with self._write_errors():
      return self.manager.save(step, args=args, force=force)

  @contextlib.contextmanager
  def _write_errors(self):
    """Turns an error of the step being written into a one-line CheckpointWriteError."""
    try:
      yield
    except (OSError, ValueError, RuntimeError) as e:
      if self._writing is None or isinstance(e, CheckpointWriteError):
        raise
      step, self._writing = self._writing, None
      complete = [s for s in self.manager.all_steps() if s != step]
      raise CheckpointWriteError(
          f'could not write checkpoint step {step} to {self.directory}: {_one_line(e)}; '
          f'the last complete checkpoint is '
          f'{f"step {max(complete)}" if complete else "none"} (disk full or not writable?)'
      ) from e

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """(state placed as `abstract_state`'s shardings, iterator state) at `step`."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    args = ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args),
        data=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    return restored['state'], dict(restored['data'] or {})

  def reached_preemption(self, step: int) -> bool:
    """True when the cluster scheduler announced a preemption (multi-host runtimes)."""
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    with self._write_errors():
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()


# ---------------------------------------------------------------------------- readers


def _reader(path: str) -> ocp.CheckpointManager:
  """A read-only manager over a workdir or its checkpoints/ directory."""
  directory = path if os.path.basename(os.path.normpath(path)) == CHECKPOINT_DIR else (
      checkpoint_dir(path))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no checkpoints under {path!r} (looked for {directory})')
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  return ocp.CheckpointManager(directory, options=options, item_handlers=_item_handlers())


def list_steps(workdir: str) -> list[int]:
  """Steps with a complete (finalized) checkpoint, ascending; [] if none."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  manager = _reader(workdir)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def _params_metadata(manager: ocp.CheckpointManager, step: int) -> Any:
  metadata = manager.item_metadata(step)['state']
  tree = metadata.tree if hasattr(metadata, 'tree') else metadata
  if 'params' not in tree:
    raise ValueError(f'checkpoint step {step} in {manager.directory} has no params')
  return tree['params']


def _restore_subtree(manager, step: int, abstract_params: Any) -> Any:
  item = {'params': abstract_params}
  restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))
  return manager.restore(step, args=args)['state']['params']


def restore_params(workdir: str, step: int | None = None, shardings: Any = None
                   ) -> tuple[int, Any]:
  """(step, params) of `workdir`'s checkpoint at `step` (default: the latest).

  With `shardings` (a tree like the params), the arrays are placed so; without,
  they come back replicated on the first device. Only the parameters are read.
  """
  manager = _reader(workdir)
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f'no complete checkpoint in {manager.directory}')
    step = steps[-1] if step is None else step
    if step not in steps:
      raise FileNotFoundError(f'no checkpoint at step {step} in {manager.directory} '
                              f'(have {steps})')
    metadata = _params_metadata(manager, step)
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, metadata)
    abstract = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                            metadata, shardings)
    return step, _restore_subtree(manager, step, abstract)
  finally:
    manager.close()


def init_params_from(path: str, params: Any, shardings: Any, *, step: int | None = None,
                     include: str = '.*', exclude: str = '') -> tuple[Any, list[str]]:
  """Copies parameters from another run's checkpoint into `params` (fine-tuning).

  A parameter is copied when its '/'-joined path matches `include`, does not match
  `exclude`, and exists in the checkpoint with the same shape. Returns the new
  params and the copied paths; parameters not copied keep their values (a new
  classification head, say). Raises if nothing at all was copied (a wrong path
  must not silently train from scratch).
  """
  manager = _reader(path)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no complete checkpoint in {manager.directory}')
    source = _params_metadata(manager, step)
    source_shapes = {p: tuple(m.shape) for p, m in zip(
        jax.tree.leaves(optimizer_lib.param_paths(source)), jax.tree.leaves(source))}
    include_re, exclude_re = re.compile(include), re.compile(exclude) if exclude else None

    def wanted(p: str, x) -> bool:
      return (bool(include_re.search(p)) and not (exclude_re and exclude_re.search(p))
              and source_shapes.get(p) == tuple(x.shape))

    paths = optimizer_lib.param_paths(params)
    selected = jax.tree.map(wanted, paths, params)
    # The subset of the target tree to read: nested dicts holding the wanted leaves.
    abstract = _select(params, selected, shardings)
    if not abstract:
      raise ValueError(f'init from {path} step {step}: no parameter matched include={include!r} '
                       f'exclude={exclude!r} with the same shape')
    loaded = _restore_subtree(manager, step, abstract)
  finally:
    manager.close()
  copied = []

  def merge(target, source_tree, prefix=''):
    if not isinstance(target, Mapping):
      return source_tree
    out = dict(target)
    for k, v in source_tree.items():
      out[k] = merge(target[k], v, f'{prefix}{k}/')
      if not isinstance(target[k], Mapping):
        copied.append(f'{prefix}{k}')
    return out

  new_params = merge(params, loaded)
  logging.info('initialised %d parameters from %s step %d', len(copied), path, step)
  return new_params, copied


def _select(params, selected, shardings):
  if isinstance(params, Mapping):
    out = {}
    for k in params:
      sub = _select(params[k], selected[k], shardings[k])
      if sub is not None and sub != {}:
        out[k] = sub
    return out
  if not selected:
    return None
  return jax.ShapeDtypeStruct(params.shape, params.dtype, sharding=shardings)


def tree_equal(a: Any, b: Any) -> bool:
  """Bitwise equality of two pytrees of arrays (used by resume tests)."""
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  return tree_a == tree_b and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))
