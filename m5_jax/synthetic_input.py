"""Synthetic batches of the configured schema: `config.input.dataset = 'synthetic'`.

For smoke runs, throughput benchmarks without an input bottleneck, and sharding/
resume tests that must not depend on a built dataset. Like the real pipeline
(m5_jax/input_pipeline.py) the global batch at step s is a pure function of
(seed, s), so resumption from the iterator state {'step': s, 'source':
'synthetic'} is exact. Unlike it, every process generates the whole global batch
(random numbers, cheap) and keeps only its own rows (`sharding.rows_for_mesh`).

The data has learnable structure so that a loss can fall: token ids follow a
Zipf law over a small vocabulary, the table repeats the text's tokens when text
comes before table in config.modalities (a text<->table contrastive signal),
dense features are the item's latent vector plus noise; labels are class indices
in [0, num_classes), as the fine-tuning head needs. Fields are filled by name and
dtype from `m5_jax.batch.batch_spec`, so a new modality gets synthetic data
without code here.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from m5_jax import batch as batch_lib
from m5_jax import sharding as sharding_lib

_VOCAB_USED = 200   # token ids drawn from [5, 5 + _VOCAB_USED)
_PRESENT_PROB = 0.85


def _zipf_tokens(rng: np.random.Generator, shape, vocab_size: int) -> np.ndarray:
  vocab = min(_VOCAB_USED, vocab_size - 5)
  ranks = np.arange(1, vocab + 1)
  probs = 1.0 / ranks
  return (5 + rng.choice(vocab, size=shape, p=probs / probs.sum())).astype(np.int32)


def _modality_fields(spec: Mapping[str, Any], rng: np.random.Generator, batch_size: int,
                     latent: np.ndarray, text_ids: np.ndarray | None, vocab_size: int):
  present = rng.random(batch_size) < _PRESENT_PROB
  out = {}
  # The sequence length of this modality's token masks (first 2-D bool 'mask').
  mask_shape = next((s for n, (s, d) in spec.items() if n == 'mask'), None)
  lengths = None
  if mask_shape is not None:
    length = mask_shape[0]
    lengths = rng.integers(max(length // 3, 1), length + 1, size=batch_size)
    valid = np.arange(length)[None] < lengths[:, None]
    out['mask'] = valid & present[:, None]
  for name, (shape, dtype) in spec.items():
    if name in ('present', 'mask'):
      continue
    full = (batch_size, *shape)
    if name == 'ids':
      ids = _zipf_tokens(rng, full, vocab_size)
      if text_ids is not None:  # the table repeats the title's tokens
        reps = -(-shape[0] // text_ids.shape[1])
        ids = np.tile(text_ids, (1, reps))[:, :shape[0]]
      ids[:, 0] = 2  # BOS
      out[name] = np.where(out['mask'], ids, 0).astype(dtype)
    elif name == 'span':
      span = (np.arange(shape[0]) // 3 + 1)[None].repeat(batch_size, 0)
      out[name] = np.where(out['mask'], span, 0).astype(dtype)
    elif name == 'is_value':
      out[name] = out['mask'] & ((np.arange(shape[0]) // 3) % 2 == 1)[None]
    elif dtype == 'bool':
      out[name] = np.broadcast_to(present.reshape((-1,) + (1,) * len(shape)), full).copy()
    elif dtype == 'uint8':
      out[name] = rng.integers(0, 256, size=full, dtype=np.uint8)
    elif dtype.startswith('float'):
      noise = rng.standard_normal(full).astype(np.float32)
      signal = np.resize(latent, (batch_size, int(np.prod(shape)))).reshape(full)
      out[name] = (signal + 0.5 * noise).astype(dtype)
    else:
      out[name] = rng.integers(0, 4, size=full).astype(dtype)
  out['present'] = present
  # An absent modality is all zeros with all-False masks (the batch schema's rule).
  for name, value in out.items():
    if name != 'present':
      value[~present] = 0
  return out


def make_batch(config: ml_collections.ConfigDict, step: int, batch_size: int, seed: int,
               num_classes: int = 16) -> dict[str, Any]:
  """The global synthetic batch of `step` (numpy)."""
  rng = np.random.default_rng([seed, step])
  spec = batch_lib.batch_spec(config)
  latent = rng.standard_normal((batch_size, 64)).astype(np.float32)
  vocab = int(config.model.get('vocab_size', 8000))
  batch: dict[str, Any] = {
      'example_mask': np.ones(batch_size, bool),
      'index': (step * batch_size + np.arange(batch_size)).astype(np.int32),
      'label': rng.integers(0, num_classes, size=batch_size).astype(np.int32),
      'instance': rng.integers(0, 4 * num_classes, size=batch_size).astype(np.int32),
  }
  text_ids = None
  for m in config.modalities:
    fields = _modality_fields(spec[m], rng, batch_size, latent,
                              text_ids if m == 'table' else None, vocab)
    if m == 'text':
      text_ids = np.where(fields['mask'], fields['ids'], 0)
    batch[m] = fields
  return batch


class SyntheticIterator:
  """Global synthetic batches on `mesh`, with the pipeline's get_state/restore API."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               batch_size: int, seed: int, num_classes: int = 16):
    self._config, self._mesh = config, mesh
    self.batch_size, self.seed, self.num_classes = batch_size, seed, num_classes
    self.rows = sharding_lib.rows_for_mesh(mesh, batch_size)
    self._sharding = sharding_lib.batch_sharding(mesh)
    self.step = 0
    self.num_examples = None  # unbounded: give durations in steps or examples

  def __iter__(self):
    return self

  def __next__(self):
    host = make_batch(self._config, self.step, self.batch_size, self.seed, self.num_classes)
    local = jax.tree.map(lambda x: x[self.rows], host)
    self.step += 1
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._sharding, x),
                        local)

  def get_state(self) -> dict[str, Any]:
    return {'step': self.step, 'source': 'synthetic'}

  def restore(self, state: Mapping[str, Any]) -> None:
    self.step = int(state['step'])
