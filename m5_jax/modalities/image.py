"""Image (the main product image): ViT patches (raw) or detector regions (features).

form 'raw':      pixels uint8[S, S, 3] -> (S/p)^2 patch tokens + [CLS]. Masked patch
                 modeling zeroes the patch's pixels; its target is the patch's
                 pixels, normalised per patch (MAE's norm_pix_loss).
form 'features': 36 regions x 2048 (float16) + 5-d boxes (bottom-up attention) -> region
                 tokens + [CLS], the box projection acting as the position.
                 Masked region modeling zeroes the region feature (the box stays,
                 as in UNITER); its target is the region feature.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from m5_jax.modalities import base


def patchify(images, patch: int):
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order."""
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f'image size {h}x{w} is not a multiple of patch_size {patch}')
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify_mask(selected, grid: int, patch: int):
  """bool[B, grid*grid] patch mask -> bool[B, grid*patch, grid*patch] pixel mask."""
  m = selected.reshape(-1, grid, 1, grid, 1)
  m = jnp.broadcast_to(m, (m.shape[0], grid, patch, grid, patch))
  return m.reshape(-1, grid * patch, grid * patch)


def pixels_to_float(pixels):
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return pixels.astype(jnp.float32) / 127.5 - 1.0


class PatchEmbedder(base.Embedder):
  """ViT patch embedding (a Dense on flattened patches: a 2-D kernel shards cleanly)."""

  @nn.compact
  def __call__(self, inputs, *, deterministic: bool):
    dtype = base.compute_dtype(self.shared)
    patches = patchify(pixels_to_float(inputs['pixels']), self.cfg.patch_size)
    tokens = base.dense(self.hidden, (None, 'embed'), dtype, name='patch')(patches.astype(dtype))
    return self.finish(tokens, jnp.ones(tokens.shape[:2], bool), inputs['present'],
                       deterministic=deterministic, norm=self.cfg.get('embed_norm', True))


class RegionEmbedder(base.Embedder):
  """UNITER's image embedder: LN(W r) + LN(W box), no learned order positions."""

  @nn.compact
  def __call__(self, inputs, *, deterministic: bool):
    dtype = base.compute_dtype(self.shared)
    regions = base.dense(self.hidden, (None, 'embed'), dtype, name='region')(
        inputs['regions'].astype(dtype))
    boxes = base.dense(self.hidden, (None, 'embed'), dtype, name='box')(
        inputs['boxes'].astype(dtype))
    tokens = (base.layer_norm(dtype, name='region_norm')(regions)
              + base.layer_norm(dtype, name='box_norm')(boxes))
    return self.finish(tokens, inputs['mask'], inputs['present'], deterministic=deterministic,
                       add_positions=False)


class Image(base.MaskedFeatureModality):
  """The image modality plugin (see base.Modality)."""
  name = 'image'
  code = 'i'

  def default_config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        'form': 'raw',               # 'raw' (pixels) | 'features' (detector regions)
        'image_size': 224,           # raw: resized to S x S
        'patch_size': 16,            # raw: (S/p)^2 tokens
        'embed_norm': True,          # raw: LayerNorm on the patch embeddings (False: ViT's)
        'num_regions': 36,           # features
        'region_dim': 2048,
        'box_dim': 5,
        'mask_prob': 0.15,           # share of patches/regions masked, at least one
        'target': 'regression',      # 'regression' | 'classification' (in-batch NCE)
        'normalize_target': None,    # None: True for raw pixels, False for region features
        'nce_temperature': 0.07,
        'encoder_layers': None,
    })

  def _grid(self, cfg) -> int:
    if cfg.image_size % cfg.patch_size:
      raise ValueError(f'modality.image.image_size={cfg.image_size} is not a multiple of '
                       f'patch_size={cfg.patch_size}')
    return cfg.image_size // cfg.patch_size

  def batch_spec(self, cfg):
    if base.check_form(self.name, cfg) == 'raw':
      return {'present': ((), 'bool'),
              'pixels': ((cfg.image_size, cfg.image_size, 3), 'uint8')}
    r = cfg.num_regions
    # Regions stay float16 as stored (half the host bytes and host->device copy); the
    # embedder casts them to the compute dtype, the targets are cast to float32.
    return {'present': ((), 'bool'), 'regions': ((r, cfg.region_dim), 'float16'),
            'boxes': ((r, cfg.box_dim), 'float32'), 'mask': ((r,), 'bool')}

  def num_tokens(self, cfg) -> int:
    content = self._grid(cfg) ** 2 if base.check_form(self.name, cfg) == 'raw' else cfg.num_regions
    return 1 + content

  def preprocess(self, example, cfg, tokenizer):
    del tokenizer
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    present = tf.cast(example['present']['image'], tf.bool)
    if base.check_form(self.name, cfg) == 'raw':
      size = cfg.image_size
      image = tf.convert_to_tensor(example['image'])
      resized = tf.image.resize(image, [size, size], method='bilinear', antialias=True)
      pixels = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
      pixels = tf.where(present, pixels, tf.zeros_like(pixels))
      pixels.set_shape([size, size, 3])
      return {'present': present, 'pixels': pixels}
    r = cfg.num_regions
    regions = tf.cast(example['image_regions'], tf.float16)[:r]  # as stored: no pass
    boxes = tf.cast(example['image_boxes'], tf.float32)[:r]
    rows = tf.shape(regions)[0]
    # Releases pad images with fewer detections with all-zero rows.
    mask = tf.logical_and(present, tf.reduce_any(tf.not_equal(regions, 0), axis=-1))
    pad = lambda x: tf.pad(x, [[0, r - rows]] + [[0, 0]] * (len(x.shape) - 1))
    keep = lambda x: tf.where(mask[:, None], x, tf.zeros_like(x))
    # Rows the mask drops are all zero already unless the image is absent: a cond, not
    # a float16 select over every value (audio.py).
    absent = tf.zeros([r, cfg.region_dim], tf.float16)
    regions = tf.cond(present, lambda: pad(regions), lambda: absent)
    boxes, mask = keep(pad(boxes)), pad(mask)
    regions.set_shape([r, cfg.region_dim])
    boxes.set_shape([r, cfg.box_dim])
    mask.set_shape([r])
    return {'present': present, 'regions': regions, 'boxes': boxes, 'mask': mask}

  def embedder(self, cfg, hidden, shared):
    if base.check_form(self.name, cfg) == 'raw':
      self._grid(cfg)
      return PatchEmbedder(cfg, hidden, shared)
    return RegionEmbedder(cfg, hidden, shared)

  # --- base.MaskedFeatureModality hooks ---------------------------------------

  def feature_dim(self, cfg) -> int:
    return cfg.patch_size ** 2 * 3 if cfg.form == 'raw' else cfg.region_dim

  def content_mask(self, inputs, cfg):
    if cfg.form == 'raw':
      return jnp.ones((inputs['pixels'].shape[0], self._grid(cfg) ** 2), bool)
    return inputs['mask']

  def content_features(self, inputs, cfg):
    if cfg.form == 'raw':
      return patchify(pixels_to_float(inputs['pixels']), cfg.patch_size)
    return inputs['regions']

  def zero_content(self, inputs, selected, cfg):
    if cfg.form == 'raw':
      pixel_mask = unpatchify_mask(selected, self._grid(cfg), cfg.patch_size)
      inputs['pixels'] = jnp.where(pixel_mask[..., None], 0, inputs['pixels']).astype(jnp.uint8)
    else:
      inputs['regions'] = jnp.where(selected[..., None], 0.0, inputs['regions'])
    return inputs


PLUGIN = Image()
