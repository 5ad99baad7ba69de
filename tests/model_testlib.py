"""Shared helpers for the model/objective tests: tiny configs and random batches."""
from __future__ import annotations

import numpy as np

from m5_jax import batch as batch_lib
from m5_jax.models import presets

VOCAB = 64

# Small inputs so that every test compiles and runs in seconds.
SMALL_INPUTS = {
    'text': dict(max_len=12, vocab_size=VOCAB),
    'table': dict(max_len=16, max_span_len=4, vocab_size=VOCAB),
    'image': dict(image_size=32, patch_size=16),
    'video': dict(num_frames=4, frame_size=32, patch_size=16),
    'audio': dict(mel_bins=16, mel_frames=64, patch_frames=16),
}


def tiny_config(method='m5_mmt', modalities=None, **model_overrides):
  config = presets.full_config(method, 'tiny', modalities)
  config.model.vocab_size = VOCAB
  config.model.dropout = 0.0
  config.model.update(model_overrides)
  for m in config.modalities:
    config.modality[m].update(SMALL_INPUTS.get(m, {}))
  return config


def random_batch(config, batch_size, seed=0, present_prob=0.8, present=None):
  """A numpy batch with realistic content; `present` = {m: bool[B]} overrides sampling."""
  rng = np.random.default_rng(seed)
  b = batch_lib.zeros_batch(config, batch_size)
  b['example_mask'][:] = True
  b['index'][:] = np.arange(batch_size)
  for m in config.modalities:
    d = b[m]
    d['present'][:] = (present[m] if present is not None and m in present
                       else rng.random(batch_size) < present_prob)
    p = d['present']
    if m in ('text', 'table'):
      length = d['ids'].shape[1]
      n = rng.integers(3, length + 1, size=batch_size)
      pos = np.arange(length)[None]
      valid = (pos < n[:, None]) & p[:, None]
      d['ids'][:] = np.where(valid, rng.integers(5, VOCAB, size=d['ids'].shape), 0)
      d['ids'][:, 0] = np.where(p, 2, 0)
      d['mask'][:] = valid
      if m == 'table':  # spans of 2 tokens: key, value, key, value, ...
        d['span'][:] = np.where(valid & (pos > 0), 1 + (pos - 1) // 2, 0)
        d['is_value'][:] = valid & (pos > 0) & (d['span'] % 2 == 0)
      continue
    for k, v in d.items():
      if k == 'present':
        continue
      shape = (-1,) + (1,) * (v.ndim - 1)
      if v.dtype == bool:
        v[:] = p.reshape(shape)
        v[:, v.shape[1] // 2 + 1:] &= rng.random(batch_size)[:, None] < 0.5  # some padding
      elif v.dtype == np.uint8:
        v[:] = rng.integers(0, 256, size=v.shape) * p.reshape(shape)
      else:
        v[:] = rng.normal(size=v.shape) * p.reshape(shape)
  return b


def random_params(model, batch, seed=0):
  """Parameters of the model's shapes filled by NumPy (boxed, with logical axes).

  jit-compiling flax's init costs seconds per model on CPU (threefry per
  parameter); tests that only need *some* weights use this instead.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax.core import meta  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))['params']

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'scale' in name.split("'")[-2:][0] and 'log_scale' not in name:
      return (1.0 + 0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
    if 'log_scale' in name:
      return np.full(leaf.shape, np.log(1 / 0.07), leaf.dtype)
    return (0.05 * rng.normal(size=leaf.shape)).astype(leaf.dtype)

  values = jax.tree_util.tree_map_with_path(fill, meta.unbox(abstract))
  return jax.tree.map(lambda box, v: box.replace_boxed(v) if isinstance(box, meta.AxisMetadata) else v,
                      abstract, values, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
