"""Table (the product's property/value "pv" pairs): key and value spans, masked entity modeling.

Layout of one item: BOS, then key_1, value_1, key_2, value_2, ... each span
tokenized separately (at most `max_span_len` tokens), numbered 1..n in `span`,
with `is_value` telling values from keys. Whole spans are kept while they fit in
`max_len` (the table is cut between two (key, value) pairs, unless the first pair
alone is too long). Masking selects whole spans and replaces all their tokens with [MASK].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from m5_jax.modalities import base
from m5_jax.modalities import text


class TableEmbedder(base.Embedder):
  """Shared word embeddings + positions + key/value type embeddings."""

  @nn.compact
  def __call__(self, inputs, *, deterministic: bool):
    dtype = base.compute_dtype(self.shared)
    tokens = self.shared['word_embed'](inputs['ids']).astype(dtype)
    types = base.embedding_param(self, 'key_value_types', (2, self.hidden))
    tokens = tokens + jnp.take(types, inputs['is_value'].astype(jnp.int32), axis=0).astype(dtype)
    return self.finish(tokens, inputs['mask'], inputs['present'], deterministic=deterministic,
                       add_cls=False)


def pack_spans(span_ids, max_len: int, max_span_len: int):
  """tf side: ragged [2n, (tokens)] spans (k1, v1, k2, v2, ...) -> fixed-length fields.

  Returns (ids, span, is_value, num_spans) with BOS first; padded with zeros.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  span_ids = span_ids[:, :max_span_len]
  lengths = span_ids.row_lengths()
  budget = tf.cast(max_len - 1, tf.int64)  # BOS takes one slot
  # Keep the whole (key, value) pairs that fit; if not even the first pair
  # fits, keep it and cut it at max_len (better a cut pair than an empty table).
  pair_ends = tf.cumsum(lengths)[1::2]
  keep = 2 * tf.reduce_sum(tf.math.cumprod(tf.cast(pair_ends <= budget, tf.int32)))
  keep = tf.where(tf.logical_and(keep == 0, tf.size(lengths) > 0), 2, keep)
  kept = span_ids[:keep]
  flat = kept.flat_values[:max_len - 1]
  span_of_token = tf.cast(kept.value_rowids()[:max_len - 1] + 1, tf.int32)
  is_value = tf.equal(span_of_token % 2, 0)  # spans 1, 3, ... are keys
  pad = max_len - 1 - tf.shape(flat)[0]
  ids = tf.pad(tf.concat([[text.BOS_ID], flat], 0), [[0, pad]])
  span = tf.pad(tf.concat([[0], span_of_token], 0), [[0, pad]])
  is_value = tf.pad(tf.concat([[False], is_value], 0), [[0, pad]])
  for t in (ids, span, is_value):
    t.set_shape([max_len])
  return ids, span, is_value, keep


class Table(text.WordModality):
  """The table modality plugin (see base.Modality)."""
  name = 'table'
  code = 'p'
  embedder_class = TableEmbedder
  default_max_len = 64   # paper: 64 tokens including BOS; mask_prob: a share of spans, at least 1

  def own_defaults(self) -> dict:
    return {'max_span_len': 16}   # a single key or value is cut to this many tokens first

  def batch_spec(self, cfg):
    length = (cfg.max_len,)
    return {'present': ((), 'bool'), 'ids': (length, 'int32'), 'mask': (length, 'bool'),
            'span': (length, 'int32'), 'is_value': (length, 'bool')}

  def preprocess(self, example, cfg, tokenizer):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if 'pv_ids' in example:  # tokenised when the dataset was built (k1, v1, k2, ... end to end)
      spans = tf.RaggedTensor.from_row_lengths(tf.cast(example['pv_ids'], tf.int32),
                                               tf.cast(example['pv_lengths'], tf.int64))
    else:
      keys = tf.reshape(example['pv_keys'], [-1])
      values = tf.reshape(example['pv_values'], [-1])
      num_pairs = tf.minimum(tf.size(keys), tf.size(values))
      interleaved = tf.reshape(tf.stack([keys[:num_pairs], values[:num_pairs]], axis=1), [-1])
      spans = text.as_tokenizer(tokenizer).tokenize(interleaved)
    ids, span, is_value, num_spans = pack_spans(spans, cfg.max_len, cfg.max_span_len)
    present = tf.logical_and(tf.cast(example['present']['table'], tf.bool), num_spans > 0)
    keep = tf.logical_and(present, tf.logical_or(span > 0, tf.range(cfg.max_len) == 0))
    zero = lambda x: tf.where(keep, x, tf.zeros_like(x))
    return {'present': present, 'ids': zero(ids), 'mask': keep, 'span': zero(span),
            'is_value': zero(is_value)}

  def mask_for_pretraining(self, inputs, rng, cfg):
    """Masked entity modeling: whole spans replaced by [MASK]."""
    span = inputs['span']
    real = inputs['mask'] & inputs['present'][:, None] & (span > 0)
    num_spans = jnp.max(jnp.where(real, span, 0), axis=-1)                  # [B]
    span_slots = jnp.arange(1, cfg.max_len + 1)[None, :]                     # span ids 1..max_len
    chosen = base.select_random(span_slots <= num_spans[:, None], rng, cfg.mask_prob)
    chosen = jnp.pad(chosen, [(0, 0), (1, 0)])                               # index 0: no span
    selected = real & jnp.take_along_axis(chosen, span, axis=1)
    masked = dict(inputs, ids=jnp.where(selected, text.MASK_ID, inputs['ids']))
    return masked, {'ids': inputs['ids'], 'weights': selected.astype(jnp.float32)}


PLUGIN = Table()
