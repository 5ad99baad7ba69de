"""Deterministic, sharded input pipeline: TFDS m5product -> host batches -> global jax.Arrays.

Design: random access by index (Grain-style, built from tf.data + ArrayRecord)
---------------------------------------------------------------------------------
The batch at step s is a pure function of (seed, s) and the process layout only
chooses which rows of it this process loads:

  * The split is read through `builder.as_data_source(split)`: ArrayRecord files
    give O(1) random access to example i (i = its position in the TFDS split,
    the `index` field of the batch).
  * Training: steps_per_epoch = N // global_batch (drop remainder). Row r of step s
    is position q = (s % steps_per_epoch) * global_batch + r of epoch
    e = s // steps_per_epoch, mapped to an example by a stateless pseudo-random
    permutation of [0, N): `tf.random.experimental.index_shuffle(q, seed=(seed, e))`.
    Every epoch is reshuffled, nothing is materialised (O(1) memory at 6M items),
    and the dropped remainder differs per epoch.
  * Eval: row r of step s is example s * global_batch + r, in split order; rows
    past the end of the split are padding (example_mask=False, index/label/
    instance -1, every modality absent). Each example appears exactly once.
  * label and instance stay exact int64 in host batches; devices get int32 views
    (`make_global_batch`, see m5_jax/batch.py).
  * Each process loads only its own rows of every global batch (by default the
    contiguous block process_index * local_batch ...; `sharding.rows_for_mesh` gives the
    exact rows when the mesh maps processes to non-contiguous blocks). So two
    processes read disjoint shards that cover the split, and a run on 2 hosts
    sees exactly the same global batches as a run on 1 host.
  * Iterator state is just the next step (plus a few fields checked on
    restore): `get_state()` -> small JSON dict, checkpointable with Orbax
    (`ocp.args.JsonSave(state)`), `restore(state)` rebuilds the pipeline at that
    step with no replay.

The per-step flow in tf.data (host CPU, parallel, order-preserving):
  range(start_step, ...) -> example indices of this process's rows
  -> fetch serialized records (one batched ArrayRecord read per step; with
     config.input.read_workers > 0 in worker processes, off this process's GIL:
     m5_jax/record_reader.py)
  -> per example: TFDS decode (`features.deserialize_example`), then each
     configured modality's `plugin.preprocess(example, cfg, tokenizer)` (padding
     to fixed shapes and presence flags are the plugins' job; m5_jax/modalities).
     No Python runs per example when the build stores token ids of
     config.input.tokenizer (data_prep/m5product/token_ids.py; checked by sha256,
     `use_token_ids`): text and table read them. Otherwise (a build without ids,
     a BERT WordPiece vocabulary) they tokenise the text in a `tf.numpy_function`
     per example, which holds the GIL.
  -> batch(local_batch) -> prefetch; then on the devices
  `make_global_batch` (jax.make_array_from_process_local_data over the data axes)
  with a device prefetch of 2 (`DevicePrefetchIterator`).

File format: random access needs ArrayRecord. Build with
`tfds build data_prep/m5product --file_format array_record ...`, or convert an
existing TFRecord build with `tfds convert_format --out_file_format array_record`.

The batch schema (field names, shapes, dtypes) is documented in m5_jax/batch.py.
"""
from __future__ import annotations

import atexit
import collections
import hashlib
import logging
import os
import weakref
from typing import Any, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import read_only_builder

from m5_jax import batch as batch_lib
from m5_jax import modalities
from m5_jax import record_reader
from m5_jax import sharding as sharding_lib

Batch = dict[str, Any]
STATE_VERSION = 1
# Live pipelines, closed at exit: a tf.data iterator torn down during interpreter
# finalization with a tf.numpy_function in flight (our record fetch, the
# tokenizer) deadlocks, so a crashing run would hang instead of exiting.
_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_pipelines():
  for pipeline in list(_LIVE):
    pipeline.shutdown()


def load_tokenizer(path: str | None):
  """The sentencepiece model at `path`, a BERT checkpoint's WordPiece vocab.txt or a
  CLIP checkpoint's vocab.json (m5_jax/models/public_checkpoints/); None when no path
  is configured."""
  if not path:
    return None
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'tokenizer model not found: {path} (config.input.tokenizer; '
                            'train one with the data_prep tokenizer command)')
  from m5_jax.models import public_checkpoints  # pylint: disable=g-import-not-at-top
  if public_checkpoints.is_checkpoint_vocab(path):
    return public_checkpoints.checkpoint_tokenizer(path)
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, 'rb') as f:
    return spm.SentencePieceProcessor(model_proto=f.read())


def load_data_source(dataset: str, split: str, data_dir: str | None):
  """(random-access source of serialized records, TFDS features) for a built split."""
  source, info = open_split(dataset, split, data_dir)
  return source, info.features


def open_split(dataset: str, split: str, data_dir: str | None):
  """(random-access source of serialized records, the build's DatasetInfo)."""
  # Features come from the build's own features.json, not from the builder code
  # (which may have moved on since the files were written).
  builder = read_only_builder.builder_from_files(dataset, data_dir=data_dir)
  if split.partition('[')[0] not in builder.info.splits:  # not the file format's fault
    raise ValueError(f'split {split!r} is not in {dataset} ({builder.data_dir}); its splits are '
                     f'{", ".join(builder.info.splits)}')
  try:
    source = builder.as_data_source(
        split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  except (NotImplementedError, ValueError) as e:
    raise ValueError(
        f'{dataset} in {data_dir} has no random-access ({tfds.core.FileFormat.ARRAY_RECORD.value}) '
        f'files: build it with --file_format array_record, or run `tfds convert_format '
        f'--out_file_format array_record` on it ({e.__class__.__name__}: {str(e).splitlines()[0]})'
    ) from None
  return source, builder.info


# The build's token ids (data_prep/m5product/token_ids.py) and its metadata key.
TOKEN_ID_FIELDS = ('title_ids', 'pv_ids', 'pv_lengths')
TOKENIZER_METADATA = 'tokenizer'


def use_token_ids(info, tokenizer_path: str | None) -> bool:
  """Whether text and table read the build's token ids: it stores them, and they are
  those of the sentencepiece model at tokenizer_path (same sha256; another sha256 is
  a one-line ConfigError). None (no tokenizer, or not a sentencepiece one, e.g. a
  BERT vocabulary): the text is tokenised per example."""
  if not all(name in info.features for name in TOKEN_ID_FIELDS):
    return False  # built before token ids were stored
  try:
    recorded = info.metadata.get(TOKENIZER_METADATA) if info.metadata is not None else None
  except FileNotFoundError:  # no metadata.json
    recorded = None
  if not recorded or not tokenizer_path:
    return False
  with tf.io.gfile.GFile(tokenizer_path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  if digest != recorded['sha256']:
    from m5_jax import config_lib  # pylint: disable=g-import-not-at-top
    raise config_lib.ConfigError(  # one line from the binaries, before anything compiles
        f"config key 'input.tokenizer': {tokenizer_path} (sha256 {digest[:12]}) is not the "
        f"tokenizer whose ids {info.full_name} stores ({recorded['file']}, sha256 "
        f"{recorded['sha256'][:12]}): point config.input.tokenizer at that model, or rebuild "
        f"with this one as <release>/{recorded['file']} (tfds build ... --overwrite)")
  return True


def _is_sentencepiece(tokenizer) -> bool:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from m5_jax.modalities import text  # pylint: disable=g-import-not-at-top
  return isinstance(tokenizer, (spm.SentencePieceProcessor, text.SentencePieceTokenizer))


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> np.ndarray:
  """The rows of every global batch that one process loads (contiguous block)."""
  if global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} is not divisible by the '
                     f'{process_count} processes')
  local = global_batch_size // process_count
  return np.arange(process_index * local, (process_index + 1) * local)


class InputPipeline:
  """Host-side iterator over this process's rows of the global batches of one split.

  `next(it)` returns a numpy batch with the fields of `m5_jax.batch.host_batch_spec`
  (ids int64) and leading dimension len(rows). Training iterates forever (epochs reshuffled);
  eval stops after `num_steps` (the last batch padded).
  """

  def __init__(self, *, dataset: str, split: str, data_dir: str | None,
               config: ml_collections.ConfigDict, global_batch_size: int, train: bool,
               seed: int = 0, tokenizer: Any = None, shuffle: bool | None = None,
               process_index: int | None = None, process_count: int | None = None,
               rows: Sequence[int] | None = None, start_step: int = 0,
               num_parallel_calls: int = tf.data.AUTOTUNE, prefetch: int = 2,
               tokenizer_path: str | None = None, read_workers: int = 0):
    self.dataset, self.split, self.train = dataset, split, train
    self.global_batch_size, self.seed = int(global_batch_size), int(seed)
    self.shuffle = train if shuffle is None else shuffle
    self._config, self._tokenizer = config, tokenizer
    self._num_parallel_calls, self._prefetch = num_parallel_calls, prefetch
    if rows is None:
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
      rows = process_rows(self.global_batch_size, process_index, process_count)
    self.rows = np.asarray(rows, np.int64)
    if self.rows.size == 0 or self.rows.min() < 0 or self.rows.max() >= self.global_batch_size:
      raise ValueError(f'rows must lie in [0, {self.global_batch_size}), got {self.rows}')
    self._source, info = open_split(dataset, split, data_dir)
    self._features = info.features
    # TFDS's data source wraps array_record's, which pickles (Grain reads it that way).
    self._reader = (record_reader.ProcessRecordReader(self._source.data_source, read_workers)
                    if read_workers else None)
    # tokenizer_path: the file of `tokenizer`, to check that the build's ids are its.
    self.token_ids = use_token_ids(info, tokenizer_path if _is_sentencepiece(tokenizer) else None)
    self.num_examples = len(self._source)
    if train and self.num_examples < self.global_batch_size:
      raise ValueError(f'split {split!r} has {self.num_examples} examples, fewer than one '
                       f'global batch of {self.global_batch_size} (training drops the remainder)')
    self._spec = batch_lib.batch_spec(config)
    self._iterator: Iterator[Batch] | None = None
    self.restore({'step': start_step})
    _LIVE.add(self)

  # --- sizes ------------------------------------------------------------------
  @property
  def steps_per_epoch(self) -> int:
    """Full global batches per epoch (training drops the remainder; eval pads it)."""
    if self.train:
      return self.num_examples // self.global_batch_size
    return -(-self.num_examples // self.global_batch_size)

  @property
  def num_steps(self) -> int | None:
    """Steps until the iterator ends: None (forever) for training."""
    return None if self.train else self.steps_per_epoch

  # --- state ------------------------------------------------------------------
  def get_state(self) -> dict[str, Any]:
    """A small JSON-able dict: the next step, and fields that must match on restore."""
    return {'version': STATE_VERSION, 'step': self.step, 'epoch': self.epoch,
            'seed': self.seed, 'global_batch_size': self.global_batch_size,
            'num_examples': self.num_examples, 'split': self.split, 'train': self.train}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continue at state['step'] (from `get_state`); the next batch is that step's."""
    for key in ('seed', 'global_batch_size', 'num_examples', 'split', 'train'):
      if key in state and state[key] != getattr(self, key):
        raise ValueError(f'input state was saved with {key}={state[key]!r} but this pipeline '
                         f'has {key}={getattr(self, key)!r}: resuming would change the data order')
    step = int(state['step'])
    if step < 0 or (self.num_steps is not None and step > self.num_steps):
      raise ValueError(f'step {step} outside [0, {self.num_steps}] for eval split {self.split!r}')
    self.step = self.start_step = step
    self.close()
    self._iterator = iter(tfds.as_numpy(self._build(step)))

  def close(self) -> None:
    """Stops the tf.data workers (also done at exit); `restore` starts them again."""
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None
      if self._reader is not None:
        self._reader.release_all()

  def shutdown(self) -> None:
    """`close`, and stops the record reader processes (for good)."""
    self.close()
    if self._reader is not None:
      self._reader.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.shutdown()

  @property
  def epoch(self) -> int:
    return self.step // max(self.steps_per_epoch, 1)

  # --- iteration --------------------------------------------------------------
  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if self._iterator is None:
      raise StopIteration  # closed
    batch = next(self._iterator)  # StopIteration ends an eval pass
    self.step += 1
    return batch

  # --- the tf.data graph ------------------------------------------------------
  def _example_indices(self, step):
    """(example index, valid) for this process's rows of `step`."""
    rows = tf.constant(self.rows, tf.int64)
    n, gb = tf.constant(self.num_examples, tf.int64), tf.constant(self.global_batch_size, tf.int64)
    if not self.train:
      position = step * gb + rows
      valid = position < n
      return tf.where(valid, position, tf.zeros_like(position)), valid
    spe = tf.constant(self.steps_per_epoch, tf.int64)
    position = (step % spe) * gb + rows
    valid = tf.ones_like(rows, tf.bool)
    if not self.shuffle:
      return position, valid
    seed = tf.stack([tf.constant(self.seed, tf.int64), step // spe])
    return tf.random.experimental.index_shuffle(position, seed=seed, max_index=n - 1), valid

  def _fetch(self, indices: np.ndarray) -> np.ndarray:
    records = self._source.__getitems__(indices.tolist())
    return np.array(records, dtype=object)

  def _release_files(self, batch: Batch, paths: tf.Tensor) -> Batch:
    """The batch, once the record files it was read from are free for later reads."""
    released = tf.numpy_function(self._release, [paths], tf.bool, stateful=True)
    with tf.control_dependencies([released]):
      return tf.nest.map_structure(tf.identity, batch)

  def _release(self, paths: np.ndarray) -> bool:
    self._reader.release(paths)
    return True

  def _preprocess(self, index, valid, serialized) -> Batch:
    example = self._features.deserialize_example(serialized)
    if not self.token_ids:  # the plugins tokenise the text
      example = {k: v for k, v in example.items() if k not in TOKEN_ID_FIELDS}
    out = {
        'example_mask': valid,
        'index': tf.where(valid, tf.cast(index, tf.int32), -1),
        # Exact int64 ids on the host; `make_global_batch` sends int32 views (batch.py).
        'label': tf.where(valid, tf.cast(example['label'], tf.int64), tf.constant(-1, tf.int64)),
        'instance': tf.where(valid, tf.cast(example['instance'], tf.int64),
                             tf.constant(-1, tf.int64)),
    }
    for name in self._config.modalities:
      fields = modalities.get(name).preprocess(example, self._config.modality[name],
                                               self._tokenizer)
      fields = _conform(fields, self._spec[name], name)
      # A padding row (eval only: training rows are all real) carries no modality:
      # present False, masks False, zeros. Not done in training, where it would
      # read and write every field once more per example.
      out[name] = fields if self.train else {
          k: tf.where(valid, v, tf.zeros_like(v)) for k, v in fields.items()}
    return out

  def _build(self, start_step: int) -> tf.data.Dataset:
    end = tf.int64.max if self.num_steps is None else self.num_steps
    ds = tf.data.Dataset.range(start_step, end)
    ds = ds.map(self._example_indices)
    local_batch = len(self.rows)

    def fetch(idx, valid):
      if self._reader is None:
        records = tf.numpy_function(self._fetch, [idx], tf.string, stateful=False)
      else:  # the paths of files a worker process wrote: read per example, in C++
        records = tf.numpy_function(self._reader.read, [idx], tf.string, stateful=False)
      return idx, valid, tf.ensure_shape(records, [local_batch])

    def preprocess(idx, valid, record):
      if self._reader is None:
        return self._preprocess(idx, valid, record)
      return self._preprocess(idx, valid, tf.io.read_file(record)), record

    ds = ds.map(fetch, num_parallel_calls=self._num_parallel_calls, deterministic=True)
    ds = ds.unbatch()
    ds = ds.map(preprocess, num_parallel_calls=self._num_parallel_calls, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True)
    if self._reader is not None:
      ds = ds.map(self._release_files)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(self._prefetch)


def _conform(fields: Mapping[str, Any], spec: Mapping[str, Any], name: str) -> dict[str, tf.Tensor]:
  """Casts a plugin's fields to the batch_spec dtypes, failing clearly on a shape drift."""
  if set(fields) != set(spec):
    raise ValueError(f'modality {name!r}: preprocess returned fields {sorted(fields)}, '
                     f'batch_spec says {sorted(spec)}')
  out = {}
  for key, (shape, dtype) in spec.items():
    value = tf.convert_to_tensor(fields[key])
    if not value.shape.is_compatible_with(shape):
      raise ValueError(f'modality {name!r}: field {key!r} has shape {value.shape}, '
                       f'batch_spec says {tuple(shape)}')
    out[key] = tf.ensure_shape(tf.cast(value, tf.as_dtype(dtype)), shape)
  return out


# --- devices --------------------------------------------------------------------
def make_global_batch(host_batch: Batch, mesh: jax.sharding.Mesh,
                      data_axes: Sequence[str] | None = None, exact_ids: bool = False) -> Batch:
  """This process's numpy rows -> global jax.Arrays sharded on the batch dim over data_axes.

  The int64 ids become int32 views first (`batch.device_view`): JAX would wrap
  them. exact_ids (evaluation) adds them as int32 halves (`batch['exact_ids']`).
  """
  sharding = sharding_lib.batch_sharding(mesh, data_axes)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      batch_lib.device_view(host_batch, exact_ids))


class DevicePrefetchIterator:
  """Global batches on devices, `size` steps ahead; state/restore account for the queue."""

  def __init__(self, host: InputPipeline, mesh: jax.sharding.Mesh,
               data_axes: Sequence[str] | None = None, size: int = 2, exact_ids: bool = False):
    self.host, self.mesh, self.size, self.exact_ids = host, mesh, size, exact_ids
    self.data_axes = sharding_lib.data_axes_of(mesh) if data_axes is None else tuple(data_axes)
    self._queue: collections.deque[Batch] = collections.deque()

  def __iter__(self):
    return self

  def _fill(self):
    while len(self._queue) < self.size:
      try:
        self._queue.append(make_global_batch(next(self.host), self.mesh, self.data_axes,
                                             self.exact_ids))
      except StopIteration:
        return

  def __next__(self) -> Batch:
    self._fill()
    if not self._queue:
      raise StopIteration
    return self._queue.popleft()

  def get_state(self) -> dict[str, Any]:
    state = self.host.get_state()
    state['step'] -= len(self._queue)  # prefetched but not yet consumed
    state['epoch'] = state['step'] // max(self.host.steps_per_epoch, 1)
    return state

  def restore(self, state: Mapping[str, Any]) -> None:
    self._queue.clear()
    self.host.restore(state)


# --- from a config ----------------------------------------------------------------
def create_host_iterator(config: ml_collections.ConfigDict, split: str, *, train: bool,
                         batch_size: int | None = None, **kwargs) -> InputPipeline:
  """An InputPipeline from config.input (dataset, data_dir, tokenizer, batch_size) + config.seed."""
  data_dir = os.path.expanduser(config.input.data_dir) if config.input.data_dir else None
  kwargs.setdefault('read_workers', config.input.get('read_workers', 0))
  return InputPipeline(
      dataset=config.input.dataset, split=split, data_dir=data_dir, config=config,
      global_batch_size=batch_size or config.input.batch_size, train=train,
      seed=config.seed, tokenizer=load_tokenizer(config.input.tokenizer),
      tokenizer_path=config.input.tokenizer or None, **kwargs)


def create_iterator(config: ml_collections.ConfigDict, split: str, mesh: jax.sharding.Mesh, *,
                    train: bool, batch_size: int | None = None,
                    data_axes: Sequence[str] | None = None, device_prefetch: int = 2,
                    exact_ids: bool = False, **kwargs) -> DevicePrefetchIterator:
  """Global batches of `split` on `mesh`, each process loading the rows its devices hold.

  exact_ids: add the int64 label and instance as int32 halves (evaluation; batch.py).
  """
  global_batch_size = batch_size or config.input.batch_size
  rows = sharding_lib.rows_for_mesh(mesh, global_batch_size, data_axes)
  host = create_host_iterator(config, split, train=train, batch_size=global_batch_size,
                              rows=rows, **kwargs)
  logging.info('input %s/%s: %d examples, %d rows/step on this process, %s steps, %s',
               config.input.dataset, split, host.num_examples, len(rows),
               host.num_steps or 'unbounded',
               'token ids from the build' if host.token_ids else 'text tokenised per example')
  return DevicePrefetchIterator(host, mesh, data_axes, size=device_prefetch,
                                exact_ids=exact_ids)
