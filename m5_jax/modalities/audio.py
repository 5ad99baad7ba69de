"""Audio (the video's soundtrack): an 80 x 751 log-mel spectrogram, two ways to embed it.

Both forms read the same batch field (mel float16[80, 751] + valid-frame mask);
frames past the valid length are zeroed before embedding and in targets. The mel
travels to the devices in float16 (half the bytes of float32); the embedder and
the targets cast it to float32 there (`valid_mel`).

form 'features': the paper's 80 tokens, one per mel bin, each its 751-d row of
                 frames. Masked audio modeling zeroes rows; target = the row.
form 'raw':      time patches of `patch_frames` frames x 80 bins (751 frames ->
                 47 tokens at 16). Masked audio modeling zeroes the patch;
                 target = the patch's values.
Targets are normalised per token by default (log-mel has a large offset).

Input normalisation (`normalize_input`, in preprocess): 'utterance' (default)
standardises each clip's log-mel over its valid frames and all bins, so padding
and masked frames (zeros) equal the clip's mean. Without it, silent bins sit at
log(1e-6) = -13.8 against padding at 0, and a mel row's projection is dominated
by how many frames are valid (the clip's length) rather than by its spectrum:
on mini, audio was the model's weakest vector though its pitch names the
category. 'none' keeps raw log-mel (and is what runs saved before this key
existed used). The standardisation computes in float32 and rounds its result to
float16 once (values within float16 rounding, 2^-11 relative, of float32's).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from m5_jax.modalities import base


def _num_patches(cfg) -> int:
  return -(-cfg.mel_frames // cfg.patch_frames)


def valid_mel(inputs):
  """mel [B, bins, frames] with invalid frames zeroed."""
  return jnp.where(inputs['mask'][:, None, :], inputs['mel'].astype(jnp.float32), 0.0)


def time_patches(mel, patch_frames: int):
  """[B, bins, frames] -> [B, ceil(frames/p), p*bins] (frames padded with zeros)."""
  b, bins, frames = mel.shape
  n = -(-frames // patch_frames)
  x = jnp.pad(mel, [(0, 0), (0, 0), (0, n * patch_frames - frames)])
  return x.transpose(0, 2, 1).reshape(b, n, patch_frames * bins)


def patch_mask(frame_mask, patch_frames: int):
  """bool[B, frames] -> bool[B, patches]: a patch is real if any of its frames is."""
  b, frames = frame_mask.shape
  n = -(-frames // patch_frames)
  m = jnp.pad(frame_mask, [(0, 0), (0, n * patch_frames - frames)])
  return m.reshape(b, n, patch_frames).any(-1)


def normalize_utterance(mel, mask, how: str):
  """tf: float32[bins, frames] with invalid frames 0 -> standardised over the valid ones.

  Invalid frames being 0, the sum over all of mel is the valid frames' sum (no
  [bins, frames] mask is materialised: fewer passes over the mel)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if how == 'none':
    return mel
  if how != 'utterance':
    raise ValueError(f"audio normalize_input must be 'utterance' or 'none', got {how!r}")
  count = tf.cast(tf.reduce_sum(tf.cast(mask, tf.int32)) * tf.shape(mel)[0], tf.float32)
  count = tf.maximum(count, 1.0)
  mean = tf.reduce_sum(mel) / count
  centered = tf.where(mask[None, :], mel - mean, 0.0)
  var = tf.reduce_sum(tf.square(centered)) / count
  return centered * tf.math.rsqrt(var + 1e-5)


class MelEmbedder(base.Embedder):
  """Projection of mel rows (features) or time patches (raw), + positions."""

  @nn.compact
  def __call__(self, inputs, *, deterministic: bool):
    dtype = base.compute_dtype(self.shared)
    tokens, mask = PLUGIN.content_features(inputs, self.cfg), PLUGIN.content_mask(inputs, self.cfg)
    x = base.dense(self.hidden, (None, 'embed'), dtype, name='project')(tokens.astype(dtype))
    return self.finish(x, mask, inputs['present'], deterministic=deterministic)


class Audio(base.MaskedFeatureModality):
  """The audio modality plugin (see base.Modality)."""
  name = 'audio'
  code = 'a'
  # base.Modality: product soundtracks are speech and music, a sequence of different
  # sounds like a title's words (benchmarks/results/learning.md section 12).
  instance_view = 'clean'

  def default_config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        'form': 'raw',             # 'raw' (time patches) | 'features' (80 mel-bin rows)
        'mel_bins': 80,
        'mel_frames': 751,         # 12 s at 16 kHz, hop 256
        'patch_frames': 16,        # raw: frames per time patch
        'mask_prob': 0.15,         # share of real tokens masked, at least one
        'target': 'regression',    # 'regression' | 'classification' (in-batch NCE)
        'normalize_target': True,
        'normalize_input': 'utterance',  # 'utterance' | 'none' (see the module docstring)
        'nce_temperature': 0.07,
        'encoder_layers': None,
    })

  def batch_spec(self, cfg):
    base.check_form(self.name, cfg)
    return {'present': ((), 'bool'), 'mel': ((cfg.mel_bins, cfg.mel_frames), 'float16'),
            'mask': ((cfg.mel_frames,), 'bool')}

  def num_tokens(self, cfg) -> int:
    return 1 + (_num_patches(cfg) if base.check_form(self.name, cfg) == 'raw' else cfg.mel_bins)

  def preprocess(self, example, cfg, tokenizer):
    del tokenizer
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    bins, frames = cfg.mel_bins, cfg.mel_frames
    present = tf.cast(example['present']['audio'], tf.bool)
    mel = tf.cast(example['audio_mel'], tf.float16)[:bins, :frames]  # as stored: no pass
    shape = tf.shape(mel)
    valid = tf.minimum(tf.cast(example['audio_frames'], tf.int32), shape[1])
    present = tf.logical_and(present, valid > 0)
    mask = tf.logical_and(present, tf.range(frames) < valid)
    # Frames past the valid ones become the padding's zeros. A slice and a pad only copy;
    # a float16 tf.where runs Eigen's scalar half path (the plugins' masks were 6% of
    # the features pipeline's CPU, benchmarks/results/input_pipeline.md).
    kept = tf.where(present, valid, 0)
    mel = tf.pad(mel[:, :kept], [[0, bins - shape[0]], [0, frames - kept]])
    how = cfg.get('normalize_input', 'none')
    if how != 'none':  # in float32, rounded to float16 once
      mel = tf.cast(normalize_utterance(tf.cast(mel, tf.float32), mask, how), tf.float16)
    mel.set_shape([bins, frames])
    return {'present': present, 'mel': mel, 'mask': mask}

  def embedder(self, cfg, hidden, shared):
    base.check_form(self.name, cfg)
    return MelEmbedder(cfg, hidden, shared)

  # --- base.MaskedFeatureModality hooks ---------------------------------------

  def feature_dim(self, cfg) -> int:
    return cfg.patch_frames * cfg.mel_bins if cfg.form == 'raw' else cfg.mel_frames

  def content_mask(self, inputs, cfg):
    if cfg.form == 'raw':
      return patch_mask(inputs['mask'], cfg.patch_frames)
    rows = inputs['mel'].shape[1]
    return jnp.broadcast_to(inputs['mask'].any(-1, keepdims=True), (inputs['mask'].shape[0], rows))

  def content_features(self, inputs, cfg):
    mel = valid_mel(inputs)
    return time_patches(mel, cfg.patch_frames) if cfg.form == 'raw' else mel

  def zero_content(self, inputs, selected, cfg):
    if cfg.form == 'raw':
      frames = inputs['mel'].shape[2]
      frame_sel = jnp.repeat(selected, cfg.patch_frames, axis=1)[:, :frames]
      inputs['mel'] = jnp.where(frame_sel[:, None, :], 0.0, inputs['mel'])
    else:
      inputs['mel'] = jnp.where(selected[:, :, None], 0.0, inputs['mel'])
    return inputs


PLUGIN = Audio()
