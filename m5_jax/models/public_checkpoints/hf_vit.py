"""ViT (`hf_vit`: ViTModel / ViTForImageClassification) into the raw image tower,
exactly when `modality.image.embed_norm=False` (ViT has no LayerNorm on its patch
embeddings) and the model is pre-LN with the checkpoint's eps; the conv patch
kernel becomes the Dense over patchify's (row, col, channel) order. Video frames
can reuse it (see `vit_targets`)."""
from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

from m5_jax.models.public_checkpoints.common import (Targets, check_architecture, layer_rows,
                                                     same, transformer_fields)
from m5_jax.models.public_checkpoints.hf_bert import BERT_ATTENTION, BERT_MLP

# ViT (Hugging Face ViTModel / ViTForImageClassification) into the raw image tower:
# pre-LN layers, [CLS] + learned positions, no LayerNorm on the patch embeddings
# (modality.image.embed_norm=False), a final LayerNorm.
VIT_LAYER = layer_rows([n.replace('.self.', '.attention.') for n in BERT_ATTENTION], BERT_MLP,
                       norms=('layernorm_before', 'layernorm_after'))
VIT_SKIPPED = (
    (r'^pooler\.', 'ViT pooler (dense + tanh): m5_jax pools by mean / first token'),
    (r'^classifier\.', 'the ImageNet classification head'),
    (r'^embeddings\.mask_token$', 'masked-image-modeling token: m5_jax zeroes masked patches'),
)


def _vit_patch_kernel(w, shape):
  """Conv [D, C, p, p] -> Dense kernel over patchify's (row, col, channel) order [p*p*C, D]."""
  return w.transpose(2, 3, 1, 0).reshape(shape)


def vit_targets(tensors: Mapping[str, np.ndarray], hf_config, config, path: str,
                towers: tuple[str, ...]) -> tuple[dict[str, tuple[str, Callable]], dict[str, str]]:
  """Image: exact (the ViT itself). Video (raw frames): its frame embedder reuses ViT's
  patch embedding and patch positions, its encoder starts from ViT's layers; the frame
  [CLS], temporal positions and the embedding LayerNorm stay new (an initialisation,
  not an equivalence: frames are mean-pooled patches there)."""
  grid = hf_config['image_size'] // hf_config['patch_size']
  wanted = dict(transformer_fields(hf_config, pre_ln=True))
  if 'image' in towers:
    wanted.update({'modality.image.form': 'raw', 'modality.image.embed_norm': False,
                   'modality.image.image_size': hf_config['image_size'],
                   'modality.image.patch_size': hf_config['patch_size']})
  if 'video' in towers:
    wanted.update({'modality.video.form': 'raw',
                   'modality.video.patch_size': hf_config['patch_size']})
    if config.modality.video.frame_size != grid * hf_config['patch_size']:
      raise ValueError(f'the ViT checkpoint has a {grid}x{grid} patch grid: needs '
                       f'--config.modality.video.frame_size={grid * hf_config["patch_size"]} '
                       f'(got {config.modality.video.frame_size})')
  check_architecture('vit', hf_config, config, wanted)
  if hf_config.get('num_channels', 3) != 3:
    raise ValueError(f"the ViT checkpoint has num_channels={hf_config['num_channels']}; "
                     'm5_jax images are RGB')
  t = Targets('ViT', tensors, path)
  for m in towers:
    t.add(f'embedders_{m}/patch/kernel', ['embeddings.patch_embeddings.projection.weight'],
          _vit_patch_kernel)
    t.add(f'embedders_{m}/patch/bias', ['embeddings.patch_embeddings.projection.bias'], same)
    if m == 'image':
      t.add('embedders_image/finish/cls', ['embeddings.cls_token'], same)
      t.add('embedders_image/finish/positions', ['embeddings.position_embeddings'], same)
    else:  # the patch rows of ViT's positions (row 0 is its [CLS])
      t.add(f'embedders_{m}/spatial_positions', ['embeddings.position_embeddings'],
            lambda p, shape: p[0, 1:].reshape(shape))
    t.add_layers(f'encoders_{m}/transformer', hf_config['num_hidden_layers'], VIT_LAYER)
    t.add(f'encoders_{m}/transformer/final_ln/scale', ['layernorm.weight'], same)
    t.add(f'encoders_{m}/transformer/final_ln/bias', ['layernorm.bias'], same)
  return t.result(VIT_SKIPPED)


def vit_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """ViTModel names without the 'vit.' prefix of ViTForImageClassification."""
  return {re.sub(r'^vit\.', '', k): v for k, v in tensors.items()}
