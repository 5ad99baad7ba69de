"""A big_vision ViT `.npz` (`big_vision_vit`) into the raw image tower, as `hf_vit`
does (tanh GELU, eps 1e-6)."""
from __future__ import annotations

import os

import numpy as np

from m5_jax.models.public_checkpoints.common import (Targets, check_architecture, layer_rows,
                                                     one_line, same, transformer_fields)


# big_vision ViT (.npz, '/'-joined flax names; big_vision/models/vit.py): the same
# pre-LN layers in flax's own layout (3-D q/k/v kernels, as m5_jax's), tanh-GELU
# (flax's nn.gelu default), LayerNorm eps 1e-6, positions added to the patches only
# and then the [CLS] prepended (pool_type 'tok'; gap / MAP-pooled models have no
# [CLS]: it stays new, and their MAP head is skipped).
BIG_VISION_LAYER = layer_rows(
    [f'MultiHeadDotProductAttention_0/{p}' for p in ('query', 'key', 'value', 'out')],
    mlp=('MlpBlock_0/Dense_0', 'MlpBlock_0/Dense_1'), norms=('LayerNorm_0', 'LayerNorm_1'),
    layout='flax')
BIG_VISION_SKIPPED = (
    (r'^head/', 'the classification head'),
    (r'^pre_logits/', 'the pre-logits layer (dense + tanh)'),
    (r'^MAPHead_0/', 'multihead attention pooling: m5_jax pools by mean / first token'),
)
BIG_VISION_POSITIONS = ('pos_embedding', 'Transformer/pos_embedding',
                        'Transformer/posembed_input/pos_embedding')  # newest first


def read_big_vision(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(the architecture read off the shapes, {name: float32 array}) of a big_vision ViT .npz."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'init_from.path {path}: not a big_vision .npz file')
  try:
    with np.load(path, allow_pickle=False) as f:
      tensors = {k: np.asarray(f[k], np.float32) for k in f.files}
  except (ValueError, OSError) as e:
    raise ValueError(f'{path}: not a readable .npz ({one_line(e)})') from None
  if 'embedding/kernel' not in tensors:
    raise ValueError(f'{path}: no embedding/kernel: not a big_vision ViT')
  kernel = tensors['embedding/kernel']
  positions = next((tensors[k] for k in BIG_VISION_POSITIONS if k in tensors), None)
  if positions is None:
    raise ValueError(f'{path}: no pos_embedding (sincos position embeddings are not supported)')
  patches = positions.shape[1] - (1 if _has_cls_row(positions) else 0)
  grid = int(round(np.sqrt(patches)))
  depth = len({k.split('/')[1] for k in tensors if k.startswith('Transformer/encoderblock_')})
  block = 'Transformer/encoderblock_0/'
  return ({'model_type': 'vit', 'hidden_size': kernel.shape[-1], 'patch_size': kernel.shape[0],
           'image_size': grid * kernel.shape[0], 'num_channels': kernel.shape[2],
           'num_attention_heads':
               tensors[block + 'MultiHeadDotProductAttention_0/query/kernel'].shape[1],
           'intermediate_size': tensors[block + 'MlpBlock_0/Dense_0/kernel'].shape[1],
           'num_hidden_layers': depth, 'layer_norm_eps': 1e-6,
           'hidden_act': 'gelu_pytorch_tanh'}, tensors)  # flax's nn.gelu default


def _has_cls_row(positions) -> bool:
  """Old ViT checkpoints added positions after the [CLS] (N + 1 rows, N a square)."""
  n = positions.shape[1]
  return int(np.sqrt(n - 1)) ** 2 == n - 1 and int(np.sqrt(n)) ** 2 != n


def big_vision_targets(tensors, bv_config, config, path, towers):
  del towers  # the image tower
  check_architecture('vit', bv_config, config, {
      **transformer_fields(bv_config, pre_ln=True),
      'modality.image.form': 'raw', 'modality.image.embed_norm': False,
      'modality.image.image_size': bv_config['image_size'],
      'modality.image.patch_size': bv_config['patch_size']})
  if bv_config['num_channels'] != 3:
    raise ValueError(f"the ViT checkpoint has {bv_config['num_channels']} input channels; "
                     'm5_jax images are RGB')
  t = Targets('big_vision ViT', tensors, path)
  t.add('embedders_image/patch/kernel', ['embedding/kernel'], same)  # HWIO = patchify's order
  t.add('embedders_image/patch/bias', ['embedding/bias'], same)
  name = next(k for k in BIG_VISION_POSITIONS if k in tensors)
  if _has_cls_row(tensors[name]):  # old layout: row 0 is the [CLS]'s position
    t.add('embedders_image/finish/positions', [name], lambda p, shape: p[0].reshape(shape))
  else:  # the [CLS] has no position: a zero row
    t.add('embedders_image/finish/positions', [name],
          lambda p, shape: np.concatenate([np.zeros_like(p[0, :1]), p[0]]).reshape(shape))
  if 'cls' in tensors:
    t.add('embedders_image/finish/cls', ['cls'], same)
  t.add_layers('encoders_image/transformer', bv_config['num_hidden_layers'], BIG_VISION_LAYER,
               source='Transformer/encoderblock_{i}/{name}')
  t.add('encoders_image/transformer/final_ln/scale', ['Transformer/encoder_norm/scale'], same)
  t.add('encoders_image/transformer/final_ln/bias', ['Transformer/encoder_norm/bias'], same)
  return t.result(BIG_VISION_SKIPPED)
