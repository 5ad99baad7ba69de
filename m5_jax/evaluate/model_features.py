"""The model side of evaluation: mesh, parameters-only restore, a jitted forward.

`Embedder(workdir, config)` builds the model of a training run, places it on a
mesh made of whatever devices exist (the run's mesh when it fits, otherwise
pure data parallel), restores only the parameters of a checkpoint step (never
the optimizer state) directly onto their shardings, and embeds a split with the
eval input pipeline: every example exactly once, padded batches masked.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from m5_jax import batch as batch_lib
from m5_jax import checkpointing
from m5_jax import models
from m5_jax import sharding as sharding_lib
from m5_jax.evaluate import features as features_lib
from m5_jax.evaluate import search

FEATURE_CHOICES = ('pooled', 'encoder_pooled')
FINETUNE_TASK = 'classification_finetune'


def is_finetuned(config: ml_collections.ConfigDict) -> bool:
  """True for a workdir of the train binary's classification fine-tuning mode."""
  return config.get('task', None) == FINETUNE_TASK


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The pretraining model, or the fine-tuning classifier (backbone + head)."""
  if is_finetuned(config):
    from m5_jax import finetune  # pylint: disable=g-import-not-at-top
    return finetune.build(config)
  return models.build(config)


def eval_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The run's mesh if it fits the devices present, else data parallel over all."""
  try:
    return sharding_lib.make_mesh(config.mesh)
  except ValueError as e:
    logging.warning('training mesh does not fit %d devices (%s); evaluating data parallel',
                    jax.device_count(), e)
    return sharding_lib.make_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1}))


def eval_batch_size(requested: int, mesh: jax.sharding.Mesh) -> int:
  """`requested` rounded up to a multiple of the mesh's batch shards."""
  shards = sharding_lib.batch_shards(mesh)
  return max(shards, -(-requested // shards) * shards)


class Embedder:
  """Parameters of one step of a run on the mesh, and `embed(split)` with them."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, *,
               batch_size: int | None = None, feature: str = 'pooled',
               model: nn.Module | None = None):
    if feature not in FEATURE_CHOICES:
      raise ValueError(f'feature must be one of {FEATURE_CHOICES}, got {feature!r}')
    self.workdir, self.config, self.feature = workdir, config, feature
    self.mesh = eval_mesh(config)
    self.rules = sharding_lib.axis_rules(config.sharding)
    self.model = model or build_model(config)
    self.batch_size = eval_batch_size(batch_size or config.input.batch_size, self.mesh)
    self.param_shardings = self._param_shardings()
    self.step: int | None = None
    self.params: Any = None
    self._forward = self._make_forward()
    self._logits = None  # `classify`'s jitted forward, made on first use

  def _param_shardings(self):
    init_batch = batch_lib.zeros_batch(self.config, sharding_lib.batch_shards(self.mesh))
    rng = jax.random.key(0)

    def init():
      return self.model.init({'params': rng, 'dropout': rng}, init_batch, train=False)['params']

    with nn.logical_axis_rules(self.rules):
      abstract = jax.eval_shape(init)
    return sharding_lib.shardings_for(abstract, self.mesh, self.rules)

  def restore(self, step: int | None = None) -> int:
    """Loads the parameters (only) of `step` (default latest); returns the step."""
    self.step, self.params = checkpointing.restore_params(self.workdir, step,
                                                          self.param_shardings)
    logging.info('restored parameters of step %d from %s', self.step, self.workdir)
    return self.step

  def _make_forward(self):
    constraints = bool(self.config.sharding.get('activation_constraints', False))
    leaves, treedef = jax.tree.flatten(self.param_shardings)
    return _forward_fn(self.model, self.feature, self.mesh, self.rules, constraints,
                       tuple(leaves), treedef)

  def apply(self, params, batch):
    """The raw model outputs on a global batch (the fine-tuned classifier: logits).

    Call inside jit: FSDP-split parameters are gathered first, as in the train step
    (`sharding.gather_for_compute`: an XLA SPMD miscompile otherwise).
    """
    params = sharding_lib.gather_for_compute(params, self.param_shardings)
    return self.model.apply({'params': params}, batch, train=False)

  def iterator(self, split: str, exact_ids: bool = False):
    """Global eval batches of `split`; exact_ids adds the int64 ids as int32 halves."""
    # Imported on use here and below: input_pipeline imports TensorFlow, whose import
    # banners on stderr would otherwise come before a bad flag's one-line error.
    from m5_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    return input_pipeline.create_iterator(self.config, split, self.mesh, train=False,
                                          batch_size=self.batch_size, exact_ids=exact_ids)

  def classify(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 class, exact int64 label) of every item of `split`, in split order, by
    the fine-tuned classifier's own head (padding rows dropped)."""
    if self.params is None:
      raise RuntimeError('Embedder.classify before restore()')
    if self._logits is None:  # one jitted function for every step evaluated
      self._logits = jax.jit(self.apply)
    predictions, labels = [], []
    for batch in self.iterator(split, exact_ids=True):
      logits = self._logits(self.params, batch)
      mask = search.fetch(batch['example_mask']).astype(bool)
      predictions.append(np.argmax(search.fetch(logits), -1)[mask])
      labels.append(batch_lib.join_int64(search.fetch(batch[batch_lib.EXACT_IDS]['label']))[mask])
    return np.concatenate(predictions), np.concatenate(labels)

  def _check_embeddable(self) -> None:
    if is_finetuned(self.config):
      raise ValueError('this workdir holds a fine-tuned classifier: score it with '
                       '`m5_jax.evaluate.classification --finetuned`; frozen-feature tasks '
                       'take a pretraining workdir')
    if self.params is None:
      raise RuntimeError('Embedder.embed before restore()')

  def embed(self, split: str) -> features_lib.SplitFeatures:
    self._check_embeddable()
    batches = self.iterator(split, exact_ids=True)
    return features_lib.embed_batches(self._forward, self.params, batches,
                                      batches.host.num_examples, tuple(self.config.modalities),
                                      split=split)

  def embed_steps(self, batches, start_step: int, num_steps: int,
                  split: str = '') -> features_lib.SplitFeatures:
    """The items of eval steps [start_step, start_step + num_steps) of `batches` (an
    `iterator(split, exact_ids=True)`), row 0 = item start_step * batch_size: an
    export embeds a split in resumable chunks with the same forward as `embed`."""
    self._check_embeddable()
    first = start_step * self.batch_size
    count = min(num_steps * self.batch_size, batches.host.num_examples - first)
    batches.restore({'step': start_step})
    shifted = (dict(b, index=b['index'] - first) for b in itertools.islice(batches, num_steps))
    return features_lib.embed_batches(self._forward, self.params, shifted, count,
                                      tuple(self.config.modalities), split=split,
                                      log_every_s=float('inf'))

  def embed_host_batch(self, host_batch) -> dict[str, Any]:
    """{'pooled': {m: f32[B, D]}, 'present': {m: bool[B]}} of one numpy host batch
    (single process; B a multiple of the mesh's batch shards): embeds a query built
    outside the dataset, e.g. a search text."""
    self._check_embeddable()
    from m5_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    out = self._forward(self.params, input_pipeline.make_global_batch(host_batch, self.mesh))
    return jax.tree.map(np.asarray, out)

  def store(self) -> features_lib.FeatureStore:
    """A FeatureStore for the restored step (cache per step, feature kind, dataset
    build and split)."""
    return features_lib.FeatureStore(self.workdir, self.step, self.embed,
                                     dataset_identity(self.config), kind=self.feature)


@functools.cache
def _forward_fn(model: nn.Module, feature: str, mesh, rules, constraints: bool,
                shardings_leaves: tuple, shardings_treedef):
  """A jitted forward shared by every Embedder of the same model (one compile per process).

  The parameter shardings come flattened (hashable, for the cache); FSDP-split
  parameters are gathered before the forward, as in the train step.
  """
  param_shardings = jax.tree.unflatten(shardings_treedef, shardings_leaves)

  def forward(params, batch):
    batch = {k: v for k, v in batch.items() if k != batch_lib.EXACT_IDS}  # ids: not model input
    params = sharding_lib.gather_for_compute(params, param_shardings)
    with sharding_lib.activation_context(mesh, rules, constraints):
      out = model.apply({'params': params}, batch, train=False, heads=False)
    return {'pooled': out[feature], 'present': out['present']}

  return jax.jit(forward)


def _read_records_field(config: ml_collections.ConfigDict, split: str, name: str) -> list:
  """One scalar field of every serialized example of `split`, in split order.

  Parses the records only (no media decoding).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from m5_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  source, _ = input_pipeline.load_data_source(config.input.dataset, split,
                                              config.input.data_dir or None)
  values = []
  for lo in range(0, len(source), 4096):
    for record in source.__getitems__(list(range(lo, min(lo + 4096, len(source))))):
      feature = tf.train.Example.FromString(record).features.feature[name]
      kind = feature.WhichOneof('kind')
      field = list(getattr(feature, kind).value) if kind else []
      if len(field) != 1:
        raise ValueError(f'{split}: a record without a single {name}')
      values.append(field[0])
  return values


def read_item_ids(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """item_id of every example of `split`, in split order (= the batch `index`)."""
  return np.array([v.decode('utf-8') for v in _read_records_field(config, split, 'item_id')],
                  dtype=object)


def read_labels(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """label (category, -1 unknown) of every example of `split`, in split order."""
  return np.array(_read_records_field(config, split, 'label'), np.int64)


def dataset_identity(config: ml_collections.ConfigDict) -> dict[str, str]:
  """{'dataset', 'data_dir', 'fingerprint'} of the built dataset that config.input names.

  The fingerprint hashes the data_dir, the name/config/version, the version
  folder's dataset_info.json and every file's name, size and mtime: a rebuild
  (even with the same record counts) changes it. A few stat calls, no data read.
  """
  import hashlib  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import read_only_builder  # pylint: disable=g-import-not-at-top
  data_dir = os.path.expanduser(config.input.data_dir) if config.input.data_dir else None
  builder = read_only_builder.builder_from_files(config.input.dataset, data_dir=data_dir)
  folder = os.fspath(builder.data_dir)
  if '://' not in folder:
    folder = os.path.realpath(folder)
  files = []
  for name in sorted(tf.io.gfile.listdir(folder)):
    stat = tf.io.gfile.stat(os.path.join(folder, name))
    files.append([name, stat.length, stat.mtime_nsec])
  with tf.io.gfile.GFile(os.path.join(folder, 'dataset_info.json'), 'rb') as f:
    info = f.read()
  identity = {'dataset': builder.info.full_name, 'data_dir': folder}
  digest = hashlib.sha256(json.dumps([identity, files]).encode() + info).hexdigest()
  return {**identity, 'fingerprint': digest}
