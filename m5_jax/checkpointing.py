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
  * A checkpoint of another model (a changed config) is one line naming the
    parameters that differ and what to do (`check_compatible`), not Orbax's tree diff.
  * A listed step whose files are damaged (a kill -9 during the keep policy's delete,
    a truncated file) is moved aside as `<step>.corrupt-<time>` at restart, loudly, and
    the step before it restored (`Checkpointer.restore_latest`); readers
    (`restore_params`, the evaluators) raise UnreadableCheckpointError, which the eval
    runner skips with a warning.
  * `WorkdirLock`: one trainer per workdir (process 0 holds `<workdir>/trainer.lock`:
    pid, host, start time); a second one stops with one line, a dead holder's lock on
    this host is stale.
  * `init_params_from` copies matching parameters from another run's checkpoint
    (fine-tuning), selected by include/exclude regexes on '/'-joined paths.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from typing import Any, Mapping

import jax
import ml_collections
import orbax.checkpoint as ocp

from m5_jax import config_lib
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

  def restore_latest(self, abstract_state: Any, workdir: str
                     ) -> tuple[int | None, Any, dict[str, Any]]:
    """(step, state, iterator state) of the newest readable checkpoint; (None, None, {})
    when there is none. A step whose files are damaged is moved aside loudly
    (`quarantine`) and the step before it restored; a checkpoint of another model is a
    ConfigError (`check_compatible`); when every step is unreadable, an
    UnreadableCheckpointError (they are all aside then: a rerun starts at step 0)."""
    moved = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        check_compatible(self.manager, step, abstract_state, workdir)
        state, data_state = self.restore(step, abstract_state)
      except config_lib.ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (tensorstore raises Exception)
        if not is_unreadable(e):
          raise
        target = quarantine(self.directory, step)
        moved.append(target or str(step))
        logging.error('CHECKPOINT STEP %d IN %s IS UNREADABLE (%s); moved it to %s, trying the '
                      'step before it', step, self.directory, _one_line(e), target)
        self.manager.reload()
        continue
      if moved:
        logging.error('resumed from step %d; unreadable newer steps were moved aside: %s', step,
                      ', '.join(moved))
      return step, state, data_state
    if moved:
      raise UnreadableCheckpointError(
          f'no readable checkpoint in {self.directory}: moved {len(moved)} unreadable step(s) '
          f'aside ({", ".join(os.path.basename(m) for m in moved)}); run again to start at '
          'step 0, or give another --workdir')
    return None, None, {}

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


# ---------------------------------------------------------------------------- unreadable steps

# Errors that mean a step's files are damaged or partly gone (kill -9 during the keep
# policy's delete, a truncated copy, a bad disk), not that the config asks for another
# tree: tensorstore's codes and messages, JSON and file errors.
_UNREADABLE_MARKERS = ('NOT_FOUND', 'OUT_OF_RANGE', 'DATA_LOSS', 'byte range', 'Truncated',
                       'Zstd', 'zstd', 'corrupt', 'checksum', 'Encountered error while reading',
                       'does not exist', 'Expecting value', 'Unterminated string')


class UnreadableCheckpointError(RuntimeError):
  """A listed checkpoint step whose files cannot be read (one-line message)."""


def is_unreadable(error: BaseException) -> bool:
  """True when `error` (from reading a step) says its files are damaged or missing."""
  if isinstance(error, (OSError, json.JSONDecodeError, UnreadableCheckpointError)):
    return True
  text = str(error)
  return any(marker in text for marker in _UNREADABLE_MARKERS)


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {optimizer_lib.path_str(p): tuple(getattr(x, 'shape', ()) or ()) for p, x in leaves}


def _state_metadata(manager: ocp.CheckpointManager, step: int) -> Any:
  metadata = manager.item_metadata(step)['state']
  return metadata.tree if hasattr(metadata, 'tree') else metadata


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
                     workdir: str) -> None:
  """Raises ConfigError (one line: which parameters differ, how many, what to do) when
  the checkpoint at `step` holds another tree than `abstract_state` (a changed config)."""
  saved, wanted = _shapes_by_path(_state_metadata(manager, step)), _shapes_by_path(abstract_state)
  differ = sorted(p for p in set(saved) | set(wanted) if saved.get(p) != wanted.get(p))
  if not differ:
    return
  params = [p for p in differ if p.startswith('params/')] or differ

  def describe(path: str) -> str:
    name = path[len('params/'):] if path.startswith('params/') else path
    have, want = saved.get(path), wanted.get(path)
    if have is None:
      return f'{name} (not in the checkpoint)'
    if want is None:
      return f'{name} (only in the checkpoint)'
    return f'{name} {have} in the checkpoint, {want} in the config'

  shown = '; '.join(describe(p) for p in params[:3])
  more = f'; and {len(params) - 3} more' if len(params) > 3 else ''
  raise config_lib.ConfigError(
      f'workdir {workdir} holds a checkpoint (step {step}) of another model: {len(params)} '
      f'{"parameters differ" if params[0].startswith("params/") else "state entries differ"}: '
      f'{shown}{more}. Start fresh with a new --workdir, or start a new workdir from its '
      f'weights with --config.init_from.path={workdir}')


def quarantine(directory: str, step: int) -> str | None:
  """Moves the unreadable step aside as `<step>.corrupt-<unix time>` (never listed
  again, kept for inspection); process 0 only. Returns the new path."""
  if jax.process_index() != 0:
    return None
  source = os.path.join(directory, str(step))
  target = f'{source}.corrupt-{int(time.time())}'
  try:
    os.rename(source, target)
  except OSError as e:
    logging.error('could not move the unreadable checkpoint %s aside: %s', source, e)
    return None
  return target


# ---------------------------------------------------------------------------- workdir lock

LOCK_FILENAME = 'trainer.lock'


class WorkdirLockedError(RuntimeError):
  """Another live trainer holds the workdir (one-line message)."""


def _process_start(pid: int) -> str | None:
  """The kernel's start time of `pid` (clock ticks since boot), to tell a reused pid."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  now = _process_start(pid)
  return start is None or now is None or now == start


class WorkdirLock:
  """`<workdir>/trainer.lock` (pid, host, start time) held by process 0 of a trainer, so
  that a second trainer on the same workdir stops with one line instead of deleting
  the first one's checkpoints. The holder touches the file every HEARTBEAT_S seconds.
  A lock is stale, and taken over with a warning, when its process is dead (same
  host), or when its heartbeat stopped STALE_AFTER_S seconds ago (another host: a
  trainer killed there must not block a restart that lands elsewhere)."""

  HEARTBEAT_S = 30.0
  STALE_AFTER_S = 300.0

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILENAME)
    self.held = False
    self._stop = threading.Event()

  def acquire(self) -> 'WorkdirLock':
    if jax.process_index() != 0:
      return self
    me = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time(),
          'proc_start': _process_start(os.getpid())}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read()
        if holder is None:
          time.sleep(0.5)
          continue  # vanished, or being written: try again
        if not self._stale(holder, me):
          since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))
          raise WorkdirLockedError(
              f"workdir {os.path.dirname(self.path)} is in use by another trainer (pid "
              f"{holder.get('pid')} on {holder.get('host')} since {since}); wait for it to end, "
              f'give another --workdir, or delete {self.path} if that trainer is gone (a lock '
              f'of another host expires {self.STALE_AFTER_S:.0f} s after its last heartbeat)'
          ) from None
        logging.warning('taking over the stale lock %s of pid %s on %s (not running)', self.path,
                        holder.get('pid'), holder.get('host'))
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self.held = True
      self._stop.clear()
      threading.Thread(target=self._heartbeat, name='workdir_lock_heartbeat', daemon=True).start()
      return self
    raise WorkdirLockedError(f'could not take the lock {self.path} (it keeps changing); is '
                             'another trainer starting on this workdir?')

  def _read(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      # Half-written by a trainer killed while taking it (or garbage): stale once old.
      age = time.time() - os.path.getmtime(self.path) if os.path.exists(self.path) else 0
      return {'pid': None, 'host': None, 'started': 0} if age > 10 else None

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.HEARTBEAT_S):
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def _stale(self, holder: dict, me: dict) -> bool:
    pid = holder.get('pid')
    if pid is None:
      return True
    if holder.get('host') != me['host']:
      try:
        return time.time() - os.path.getmtime(self.path) > self.STALE_AFTER_S
      except OSError:
        return False
    if pid == me['pid']:
      return True  # this process's own lock, left by an earlier run in it
    return not _alive(int(pid), holder.get('proc_start'))

  def release(self) -> None:
    self._stop.set()
    if self.held:
      self.held = False
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


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
    try:
      metadata = _params_metadata(manager, step)
      if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, metadata)
      abstract = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                              metadata, shardings)
      return step, _restore_subtree(manager, step, abstract)
    except Exception as e:  # pylint: disable=broad-except  (tensorstore raises Exception)
      if not is_unreadable(e) or isinstance(e, FileNotFoundError) and not os.path.isdir(
          os.path.join(manager.directory, str(step))):
        raise  # not damage; or the step was deleted (keep policy) since it was listed
      raise UnreadableCheckpointError(f'checkpoint step {step} in {manager.directory} is '
                                      f'unreadable: {_one_line(e)}') from e
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
