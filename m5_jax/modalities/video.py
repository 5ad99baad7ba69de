"""Video (the product video, 1 frame per second, at most 12): one token per frame.

form 'raw':      frames uint8[T, S, S, 3]; each frame is cut into ViT patches, embedded
                 with spatial positions and mean-pooled to one token, so the
                 token count stays T + 1 ([CLS]). Masked frame modeling zeroes the
                 frame; its target is the frame shrunk to its patch grid (the
                 mean colour of each patch), normalised per frame.
form 'features': S3D float16[T, 1024] -> one token per row (the paper's input). Masked
                 frame modeling zeroes the row; its target is the row.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from m5_jax.modalities import base
from m5_jax.modalities import image


class FrameEmbedder(base.Embedder):
  """Per-frame patch embedding + spatial positions, pooled to one token per frame."""

  @nn.compact
  def __call__(self, inputs, *, deterministic: bool):
    dtype = base.compute_dtype(self.shared)
    frames = inputs['frames']
    b, t, s, _, c = frames.shape
    patches = image.patchify(image.pixels_to_float(frames.reshape(b * t, s, s, c)),
                             self.cfg.patch_size)                       # [B*T, N, p*p*C]
    x = base.dense(self.hidden, (None, 'embed'), dtype, name='patch')(patches.astype(dtype))
    spatial = base.embedding_param(self, 'spatial_positions', (patches.shape[1], self.hidden))
    x = jnp.mean(x + spatial.astype(dtype)[None], axis=1).reshape(b, t, self.hidden)
    return self.finish(x, inputs['mask'], inputs['present'], deterministic=deterministic)


class S3dEmbedder(base.Embedder):
  """Projection of pre-extracted S3D clip features + temporal positions."""

  @nn.compact
  def __call__(self, inputs, *, deterministic: bool):
    dtype = base.compute_dtype(self.shared)
    x = base.dense(self.hidden, (None, 'embed'), dtype, name='s3d')(inputs['s3d'].astype(dtype))
    return self.finish(x, inputs['mask'], inputs['present'], deterministic=deterministic)


class Video(base.MaskedFeatureModality):
  """The video modality plugin (see base.Modality)."""
  name = 'video'
  code = 'v'

  def default_config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        'form': 'raw',             # 'raw' (frames) | 'features' (S3D)
        'num_frames': 12,          # T: 1 fps, 12 s
        'frame_size': 112,         # raw: frames resized to S x S
        'patch_size': 16,          # raw: patches per frame, pooled to one token
        's3d_dim': 1024,           # features
        'mask_prob': 0.15,         # share of real frames masked, at least one
        'target': 'regression',    # 'regression' | 'classification' (in-batch NCE)
        'normalize_target': None,  # None: True for raw frames, False for S3D
        'nce_temperature': 0.07,
        'encoder_layers': None,
    })

  def batch_spec(self, cfg):
    t = cfg.num_frames
    if base.check_form(self.name, cfg) == 'raw':
      return {'present': ((), 'bool'),
              'frames': ((t, cfg.frame_size, cfg.frame_size, 3), 'uint8'),
              'mask': ((t,), 'bool')}
    # S3D stays float16 as stored; the embedder casts it, the targets are float32.
    return {'present': ((), 'bool'), 's3d': ((t, cfg.s3d_dim), 'float16'),
            'mask': ((t,), 'bool')}

  def num_tokens(self, cfg) -> int:
    base.check_form(self.name, cfg)
    return 1 + cfg.num_frames

  def preprocess(self, example, cfg, tokenizer):
    del tokenizer
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    t = cfg.num_frames
    present = tf.cast(example['present']['video'], tf.bool)
    if base.check_form(self.name, cfg) == 'raw':
      size = cfg.frame_size
      frames = tf.convert_to_tensor(example['video'])[:t]
      rows = tf.shape(frames)[0]
      present = tf.logical_and(present, rows > 0)
      resized = tf.image.resize(frames, [size, size], method='bilinear', antialias=True)
      frames = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
      frames = tf.pad(frames, [[0, t - rows], [0, 0], [0, 0], [0, 0]])
      frames = tf.where(present, frames, tf.zeros_like(frames))
      frames.set_shape([t, size, size, 3])
      return {'present': present, 'frames': frames,
              'mask': tf.logical_and(present, tf.range(t) < rows)}
    s3d = tf.cast(example['video_s3d'], tf.float16)[:t]  # as stored: no pass
    rows = tf.minimum(tf.shape(s3d)[0], tf.cast(example['video_frames'], tf.int32))
    present = tf.logical_and(present, rows > 0)
    mask = tf.logical_and(present, tf.range(t) < rows)
    kept = tf.where(present, rows, 0)  # a slice and a pad: no float16 select (audio.py)
    s3d = tf.pad(s3d[:kept], [[0, t - kept], [0, 0]])
    s3d.set_shape([t, cfg.s3d_dim])
    return {'present': present, 's3d': s3d, 'mask': mask}

  def embedder(self, cfg, hidden, shared):
    if base.check_form(self.name, cfg) == 'raw':
      return FrameEmbedder(cfg, hidden, shared)
    return S3dEmbedder(cfg, hidden, shared)

  # --- base.MaskedFeatureModality hooks ---------------------------------------

  def feature_dim(self, cfg) -> int:
    if cfg.form == 'raw':
      return (cfg.frame_size // cfg.patch_size) ** 2 * 3
    return cfg.s3d_dim

  def content_mask(self, inputs, cfg):
    return inputs['mask']

  def content_features(self, inputs, cfg):
    if cfg.form == 'features':
      return inputs['s3d']
    frames = image.pixels_to_float(inputs['frames'])
    b, t, s, _, c = frames.shape
    grid, p = s // cfg.patch_size, cfg.patch_size
    thumbs = frames.reshape(b, t, grid, p, grid, p, c).mean(axis=(3, 5))   # patch-mean colours
    return thumbs.reshape(b, t, grid * grid * c)

  def zero_content(self, inputs, selected, cfg):
    if cfg.form == 'raw':
      inputs['frames'] = jnp.where(selected[:, :, None, None, None], 0,
                                   inputs['frames']).astype(jnp.uint8)
    else:
      inputs['s3d'] = jnp.where(selected[..., None], 0.0, inputs['s3d'])
    return inputs


PLUGIN = Video()
