"""A toy sixth modality, 'rating': a few numbers per product (log price, star rating, log sales).

It exists to show that a new modality is one file plus config lines: nothing else
in m5_jax or data_prep knows about it. `PLUGIN` is its model side (m5_jax/modalities):
each number is one token (its value times a learned direction, plus a learned
embedding saying which number it is); masking regresses the hidden value. `DATA` is
its data side (data_prep/modalities): the release holds `features/rating/{id}.npy`,
float32 [1..3], and the TFDS build (config field extra_modalities=
('toy_rating_modality',)) stores it as `rating_values`. tests/test_sixth_modality.py
drives it from a release through the build, the input pipeline, training and
embedding.
"""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_prep import decode
from data_prep import release
from m5_jax.modalities import base

NUM_VALUES = 3
FOLDER = 'features/rating'  # under the release root: {item_id}.npy


class RatingEmbedder(nn.Module):
  cfg: ml_collections.ConfigDict
  hidden: int
  shared: dict

  @nn.compact
  def __call__(self, inputs, *, deterministic: bool):
    dtype = base.compute_dtype(self.shared)
    values = inputs['values'][..., None].astype(dtype)                 # [B, N, 1]
    tokens = base.dense(self.hidden, (None, 'embed'), dtype, name='value')(values)
    return base.FinishTokens(add_cls=True, dtype=dtype, name='finish')(  # + which-number embedding
        tokens, inputs['mask'], inputs['present'], deterministic=deterministic)


class Rating(base.MaskedFeatureModality):
  name = 'rating'
  code = 'r'

  def default_config(self):
    return ml_collections.ConfigDict({'num_values': NUM_VALUES, 'mask_prob': 0.34, 'target': 'regression',
                                      'normalize_target': False, 'nce_temperature': 0.1,
                                      'encoder_layers': None})

  def batch_spec(self, cfg):
    n = cfg.num_values
    return {'present': ((), 'bool'), 'values': ((n,), 'float32'), 'mask': ((n,), 'bool')}

  def num_tokens(self, cfg):
    return 1 + cfg.num_values

  def preprocess(self, example, cfg, tokenizer):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    present = tf.cast(example['present']['rating'], tf.bool)
    values = tf.cast(example['rating_values'], tf.float32)[:cfg.num_values]
    count = tf.shape(values)[0]
    values = tf.pad(values, [[0, cfg.num_values - count]])
    mask = tf.logical_and(present, tf.range(cfg.num_values) < count)
    values = tf.where(mask, values, 0.0)
    values.set_shape([cfg.num_values])
    return {'present': present, 'values': values, 'mask': mask}

  def embedder(self, cfg, hidden, shared):
    return RatingEmbedder(cfg, hidden, shared)

  # base.MaskedFeatureModality hooks: one 1-d feature per token.
  def feature_dim(self, cfg):
    return 1

  def content_mask(self, inputs, cfg):
    return inputs['mask']

  def content_features(self, inputs, cfg):
    return inputs['values'][..., None]

  def zero_content(self, inputs, selected, cfg):
    inputs['values'] = jnp.where(selected, 0.0, inputs['values'])
    return inputs


class RatingData:
  """The data side: the same numbers in both forms, without the zero padding."""
  name = 'rating'

  def features(self, sizes):
    del sizes
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return {'rating_values': tfds.features.Tensor(shape=(None,), dtype=np.float32)}

  def read(self, item_id, record, options):
    del record
    path = release.safe_path(options.root, FOLDER, item_id, '.npy')
    values, count = decode.load_feature(path, (NUM_VALUES,), variable_axis=0,
                                        bounds=options.bounds)
    return {'rating_values': values[:count].astype(np.float32)}

  def absent(self, options):
    del options
    return {'rating_values': np.zeros((0,), np.float32)}


PLUGIN = Rating()
DATA = RatingData()
