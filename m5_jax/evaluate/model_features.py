"""The model side of evaluation: mesh, parameters-only restore, a jitted forward.

`Embedder(workdir, config)` builds the model of a training run, places it on a
mesh made of whatever devices exist (the run's mesh when it fits, otherwise
pure data parallel), restores only the parameters of a checkpoint step (never
the optimizer state) directly onto their shardings, and embeds a split with the
eval input pipeline: every example exactly once, padded batches masked.
"""
from __future__ import annotations

import logging
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from m5_jax import batch as batch_lib
from m5_jax import checkpointing
from m5_jax import input_pipeline
from m5_jax import models
from m5_jax import sharding as sharding_lib
from m5_jax.evaluate import features as features_lib

FEATURE_CHOICES = ('pooled', 'encoder_pooled')


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
    self.model = model or models.build(config)
    self.batch_size = eval_batch_size(batch_size or config.input.batch_size, self.mesh)
    self.param_shardings = self._param_shardings()
    self.step: int | None = None
    self.params: Any = None
    self._forward = self._make_forward()

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
    feature = self.feature
    constraints = bool(self.config.sharding.get('activation_constraints', False))

    def forward(params, batch):
      with sharding_lib.activation_context(self.mesh, self.rules, constraints):
        out = self.model.apply({'params': params}, batch, train=False, heads=False)
      return {'pooled': out[feature], 'present': out['present']}

    return jax.jit(forward)

  def apply(self, params, batch):
    """The raw model outputs (e.g. classification logits) on a global batch."""
    return self.model.apply({'params': params}, batch, train=False)

  def iterator(self, split: str):
    return input_pipeline.create_iterator(self.config, split, self.mesh, train=False,
                                          batch_size=self.batch_size)

  def embed(self, split: str) -> features_lib.SplitFeatures:
    if self.params is None:
      raise RuntimeError('Embedder.embed before restore()')
    batches = self.iterator(split)
    return features_lib.embed_batches(self._forward, self.params, batches,
                                      batches.host.num_examples, tuple(self.config.modalities),
                                      split=split)

  def store(self) -> features_lib.FeatureStore:
    """A FeatureStore for the restored step (cache per step, feature kind and split)."""
    return features_lib.FeatureStore(self.workdir, self.step, self.embed, kind=self.feature)


def read_item_ids(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """item_id of every example of `split`, in split order (= the batch `index`).

  Reads only the item_id feature (no media decoding).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = config.input.data_dir or None
  builder = tfds.builder(config.input.dataset, data_dir=data_dir)
  source = builder.as_data_source(split, decoders=tfds.decode.PartialDecoding(
      {'item_id': True}))
  ids = []
  for lo in range(0, len(source), 4096):
    records = source.__getitems__(list(range(lo, min(lo + 4096, len(source)))))
    ids.extend(r['item_id'] for r in records)
  return np.array([i.decode() if isinstance(i, bytes) else str(i) for i in ids], dtype=object)
