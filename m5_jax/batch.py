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
  label         int32[B]   category class index, -1 if unknown.
  instance      int32[B]   product-instance id (fine-grained retrieval), -1 if unknown.

One sub-dict per configured modality (only the modalities in config.modalities):

  text    present bool[B]; ids int32[B, Lt]; mask bool[B, Lt]
          Lt = config.modality.text.max_len (paper: 36). ids start with the
          tokenizer's BOS, padded with 0.
  table   present bool[B]; ids int32[B, Lp]; mask bool[B, Lp];
          span int32[B, Lp]   1-based index of the key or value span a token belongs
                              to (keys odd, values even; 0 = BOS or padding), so a
                              whole key or value is masked.
          is_value bool[B, Lp] True for value tokens, False for key tokens and BOS.
          Lp = config.modality.table.max_len (paper: 64). ids = BOS, key_1 tokens,
          value_1 tokens, ...; cut between two (key, value) pairs.
  image   form 'raw':      present; pixels uint8[B, S, S, 3] (S = image_size)
          form 'features': present; regions float32[B, R, 2048]; boxes float32[B, R, 5];
                           mask bool[B, R]   (R = 36 regions)
  video   form 'raw':      present; frames uint8[B, T, S, S, 3]; mask bool[B, T]
          form 'features': present; s3d float32[B, T, 1024]; mask bool[B, T]
                           (T = 12: one frame per second, 12 s)
  audio   both forms:      present; mel float32[B, 80, 751] log-mel (bins x frames,
                           16 kHz, n_fft 1024, hop 256, 12 s); mask bool[B, 751] valid
                           frames. form 'features' embeds the 80 rows as 751-d
                           tokens (the paper); form 'raw' embeds time patches.

An absent modality has present=False and all-False masks; its other fields are
zeros. The model never attends to it.

`batch_spec(config)` below gives the exact shapes/dtypes for a config, built from
the modality plugins, so this schema and the code cannot drift apart.
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


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, object]:
  """{field: (shape, dtype)} with nested dicts per modality (shapes exclude B)."""
  from m5_jax import modalities  # pylint: disable=g-import-not-at-top
  spec: dict[str, object] = dict(TOP_LEVEL_SPEC)
  for name in config.modalities:
    plugin = modalities.get(name)
    spec[name] = dict(plugin.batch_spec(config.modality[name]))
  return spec


def zeros_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, object]:
  """An all-absent numpy batch of the configured shapes (for init and shape checks)."""
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
