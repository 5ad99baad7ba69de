"""The batch schema, in one place.

A batch is a nested dict of arrays with a leading batch dimension B. On the host
it is numpy (per-process slice); on devices it is a global `jax.Array` sharded on
the batch dimension over the mesh's data axes (see m5_jax/input_pipeline.py).

Top level (always present):

  example_mask  bool[B]    False for padding examples (eval batches are padded
                           to a fixed size; padding never reaches a metric).
  index         int32[B]   position of the example in the built TFDS split
                           (host-independent; -1 for padding). TFDS orders a split
                           by its own shuffling, not by the release's id list: the
                           item id is data_source(split)[index]['item_id'].
  label         int64[B]   category (the builder's label), -1 if unknown.
  instance      int64[B]   product-instance id (fine-grained retrieval), -1 if unknown:
                           12-digit release ids and 62-bit hashes of text ids.

  Host and device differ in the two ids. JAX runs 32-bit (jax_enable_x64 off), so
  exact int64 ids exist only in host numpy batches (`InputPipeline`); on the
  devices (`device_view`, done by `make_global_batch`) label and instance are
  int32: the value when it lies in [0, 2^31), else -1. That int32 label is the
  class index of the fine-tuning loss (a class index is small); no device code
  uses instance. Evaluation batches (`create_iterator(..., exact_ids=True)`)
  add the exact ids split in int32 halves, so that they are gathered across
  processes with the rest of the batch, and joined again on the host:

  exact_ids     {label, instance: int32[B, 2]}  (high, low) 32-bit words of the
                int64 id (`split_int64` / `join_int64`). Not a model input.

One sub-dict per configured modality (only the modalities in config.modalities),
holding the fields its plugin's `batch_spec(cfg)` declares; each plugin's file
(m5_jax/modalities/<name>.py) documents them, e.g. text: present bool[B], ids
int32[B, Lt], mask bool[B, Lt]; image in form 'features': present, regions
float16[B, 36, 2048], boxes float32[B, 36, 5], mask bool[B, 36]. Dense media
features (regions, S3D, mel) stay float16 on the host and on the way to the
devices; the model casts them to its compute dtype.

An absent modality has present=False and all-False masks; its other fields are
zeros. The model never attends to it.

`batch_spec(config)` below gives the exact shapes/dtypes of a device batch for a
config (what the train step compiles for), `host_batch_spec(config)` those of a
host batch, both built from the modality plugins, so this schema and the code
cannot drift apart.
"""
from __future__ import annotations

from typing import Mapping

import ml_collections

TOP_LEVEL_SPEC = {
    'example_mask': ((), 'bool'),
    'index': ((), 'int32'),
    'label': ((), 'int32'),
    'instance': ((), 'int32'),
}
# The ids that are exact int64 on the host and int32 views on the devices.
HOST_ID_FIELDS = ('label', 'instance')
EXACT_IDS = 'exact_ids'
_INT32_MAX = 2**31 - 1


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, object]:
  """{field: (shape, dtype)} with nested dicts per modality (shapes exclude B)."""
  from m5_jax import modalities  # pylint: disable=g-import-not-at-top
  spec: dict[str, object] = dict(TOP_LEVEL_SPEC)
  for name in config.modalities:
    plugin = modalities.get(name)
    spec[name] = dict(plugin.batch_spec(config.modality[name]))
  return spec


def host_batch_spec(config: ml_collections.ConfigDict) -> dict[str, object]:
  """`batch_spec` of a host batch: the ids int64."""
  spec = batch_spec(config)
  spec.update({key: ((), 'int64') for key in HOST_ID_FIELDS})
  return spec


def device_view(host_batch: Mapping[str, object], exact_ids: bool = False) -> dict[str, object]:
  """The host batch as the devices get it: int32 ids, -1 where an id does not fit;
  with exact_ids also `exact_ids` (each id as two int32 words)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = dict(host_batch)
  for key in HOST_ID_FIELDS:
    ids = np.asarray(host_batch[key])
    out[key] = np.where((ids >= 0) & (ids <= _INT32_MAX), ids, -1).astype(np.int32)
  if exact_ids:
    out[EXACT_IDS] = {key: split_int64(host_batch[key]) for key in HOST_ID_FIELDS}
  return out


def split_int64(ids) -> object:
  """int64[...] -> int32[..., 2]: the (high, low) 32-bit words, exact for any int64."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  ids = np.asarray(ids, np.int64)
  return np.stack([(ids >> 32).astype(np.int32),
                   (ids & 0xFFFFFFFF).astype(np.uint32).view(np.int32)], axis=-1)


def join_int64(words) -> object:
  """The inverse of `split_int64`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  words = np.asarray(words)
  return (words[..., 0].astype(np.int64) << 32) | words[..., 1].view(np.uint32).astype(np.int64)


def zeros_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, object]:
  """An all-absent numpy device batch of the configured shapes (for init and shape checks)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  def make(spec):
    if isinstance(spec, Mapping):
      return {k: make(v) for k, v in spec.items()}
    shape, dtype = spec
    return np.zeros((batch_size, *shape), dtype=dtype)

  out = make(batch_spec(config))
  out['index'][:] = -1
  out['label'][:] = -1
  out['instance'][:] = -1
  return out
