"""CLIP (`hf_clip`: transformers' CLIPModel, config.json + model.safetensors |
pytorch_model.bin) into both towers of the clip preset.

What the m5_jax model must be (configs/clip_init.py sets all of it from the folder;
anything else is a one-line error naming the config key):
  * pre-LN, `model.activation=quick_gelu`, `model.layer_norm_eps` the checkpoint's;
    `model.projection_dim` its projection_dim: `projection_{text,image}` are
    text_projection / visual_projection, and logit_scale is contrastive_log_scale.
  * text: the model's width (text_config), `modality.text.causal=True`,
    `pool='last'` (CLIP pools its end token: `add_eos=True` ends every title with
    EOS), `embed_norm=False` (no LayerNorm on CLIP's text embeddings); the
    positions are the first `max_len` rows; final_layer_norm is the final_ln.
  * image: `modality.image.{hidden, heads, mlp_dim}` the vision tower's (CLIP's
    towers differ in width), `form=raw`, `embed_norm=False`, `input_norm=True`
    (pre_layrnorm), `pool='token'`; post_layernorm is the final_ln (CLIP applies it
    to the class token only, which is the token the model pools).
  * vocabulary: m5_jax fixes [PAD] [UNK] BOS EOS [MASK] at ids 0..4; CLIP has
    <|startoftext|> and <|endoftext|> (its pad and unknown token too) and no mask.
    m5_jax id 0, 1, 3 take the end token's row, 2 the start token's, 4 ([MASK])
    a zero row; every other CLIP id i follows in order (`clip_vocab_order`), so
    `model.vocab_size` is CLIP's + 3.
  * pixels: m5_jax feeds x / 127.5 - 1; CLIP normalises by its image_mean / std
    (preprocessor_config.json, else OpenAI's). The patch embedding is linear, so
    that normalisation is folded into its kernel and (CLIP-less) bias: exact.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from m5_jax.models import family
from m5_jax.models.public_checkpoints.common import (HF_ACTIVATIONS, Targets, check_architecture,
                                                     layer_rows, linear, same)

# CLIPTextConfig / CLIPVisionConfig defaults, for keys a config.json leaves out.
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                     num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                     hidden_act='quick_gelu', layer_norm_eps=1e-5, bos_token_id=49406,
                     eos_token_id=49407)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                       hidden_act='quick_gelu', layer_norm_eps=1e-5)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
EXTRA_IDS = 3  # m5_jax's 5 special ids take the place of CLIP's 2

CLIP_LAYER = layer_rows([f'self_attn.{p}_proj' for p in ('q', 'k', 'v', 'out')],
                        mlp=('mlp.fc1', 'mlp.fc2'), norms=('layer_norm1', 'layer_norm2'))
CLIP_SKIPPED = ((r'position_ids$', 'a buffer (0..N-1), not a parameter'),)


def sub_configs(hf_config: Mapping[str, Any]) -> tuple[dict, dict]:
  """(text, vision) configs with CLIP's defaults for what config.json leaves out."""
  return ({**TEXT_DEFAULTS, **(hf_config.get('text_config') or {})},
          {**VISION_DEFAULTS, **(hf_config.get('vision_config') or {})})


def special_ids(text: Mapping[str, Any]) -> tuple[int, int]:
  """(start, end) token ids. Old configs say eos_token_id=2 (transformers then pools
  the highest id, the end token): CLIP's vocabulary ends with start, end."""
  if text['eos_token_id'] == 2:
    return text['vocab_size'] - 2, text['vocab_size'] - 1
  return text['bos_token_id'], text['eos_token_id']


def clip_vocab_order(vocab_size: int, start: int, end: int) -> np.ndarray:
  """order[m5_jax id] = CLIP id (-1: a zero row, [MASK]); see the module docstring."""
  rest = [i for i in range(vocab_size) if i not in (start, end)]
  return np.array([end, end, start, end, -1] + rest, np.int64)


def pixel_normalisation(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) per channel from preprocessor_config.json, else OpenAI CLIP's."""
  file = os.path.join(os.path.expanduser(path), 'preprocessor_config.json')
  mean, std = OPENAI_MEAN, OPENAI_STD
  if os.path.exists(file):
    with open(file) as f:
      pre = json.load(f)
    mean, std = pre.get('image_mean', mean), pre.get('image_std', std)
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _check_towers(config, wanted: Mapping[tuple[str, str], Any]) -> None:
  """Each (tower, key) has the checkpoint's value as the model sees it."""
  for (m, key), value in wanted.items():
    if key in family.TOWER_KEYS:
      got = family.tower_setting(config, m, key)  # text and table have the model's width
      where = (f'model.{key}' if m == 'text' and key in ('hidden', 'heads', 'mlp_dim')
               else f'modality.{m}.{key}')
    else:
      got, where = config.modality[m].get(key), f'modality.{m}.{key}'
    if got != value:
      raise ValueError(f'the CLIP checkpoint needs --config.{where}={value} (got {got})')


def clip_targets(tensors: Mapping[str, np.ndarray], hf_config, config, path: str,
                 towers: tuple[str, ...]) -> tuple[dict[str, tuple[str, Callable]], dict[str, str]]:
  text, vision = sub_configs(hf_config)
  if (text['hidden_act'], text['layer_norm_eps']) != (vision['hidden_act'],
                                                      vision['layer_norm_eps']):
    raise ValueError("the CLIP checkpoint's towers differ in hidden_act or layer_norm_eps; "
                     'm5_jax has one of each per model')
  order = clip_vocab_order(text['vocab_size'], *special_ids(text))
  fields = {'model.pre_ln': True, 'model.layer_norm_eps': float(text['layer_norm_eps']),
            'model.projection_dim': hf_config.get('projection_dim', 512)}
  if 'text' in towers:
    fields['model.vocab_size'] = len(order)
  check_architecture('clip', {'model_type': hf_config.get('model_type'),
                              'hidden_act': text['hidden_act']}, config, fields)
  wanted = {}
  if 'text' in towers:
    wanted.update({('text', 'hidden'): text['hidden_size'],
                   ('text', 'heads'): text['num_attention_heads'],
                   ('text', 'mlp_dim'): text['intermediate_size'], ('text', 'causal'): True,
                   ('text', 'pool'): 'last', ('text', 'embed_norm'): False,
                   ('text', 'add_eos'): True})
  if 'image' in towers:
    wanted.update({('image', 'hidden'): vision['hidden_size'],
                   ('image', 'heads'): vision['num_attention_heads'],
                   ('image', 'mlp_dim'): vision['intermediate_size'],
                   ('image', 'input_norm'): True, ('image', 'pool'): 'token',
                   ('image', 'form'): 'raw', ('image', 'embed_norm'): False,
                   ('image', 'image_size'): vision['image_size'],
                   ('image', 'patch_size'): vision['patch_size']})
  _check_towers(config, wanted)
  if vision['num_channels'] != 3:
    raise ValueError(f"the CLIP checkpoint has num_channels={vision['num_channels']}; "
                     'm5_jax images are RGB')

  t = Targets('CLIP', tensors, path)
  t.add('contrastive_log_scale', ['logit_scale'], same)
  if 'text' in towers:
    length = config.modality.text.max_len
    if length > text['max_position_embeddings']:
      raise ValueError(f"modality.text.max_len={length} is longer than the CLIP checkpoint's "
                       f"max_position_embeddings={text['max_position_embeddings']}")
    t.add('word_embed/embedding', ['text_model.embeddings.token_embedding.weight'],
          lambda w, shape: np.where(order[:, None] >= 0, w[order], 0.0).reshape(shape))
    t.add('embedders_text/finish/positions', ['text_model.embeddings.position_embedding.weight'],
          lambda p, shape: p[:length].reshape(shape))
    _add_encoder(t, 'text', 'text_model', text['num_hidden_layers'], 'final_layer_norm')
    t.add('projection_text/kernel', ['text_projection.weight'], linear)
  if 'image' in towers:
    mean, std = pixel_normalisation(path)
    t.add('embedders_image/patch/kernel', ['vision_model.embeddings.patch_embedding.weight'],
          lambda w, shape: (w / (2 * std)[None, :, None, None]).transpose(2, 3, 1, 0)
          .reshape(shape))
    t.add('embedders_image/patch/bias', ['vision_model.embeddings.patch_embedding.weight'],
          lambda w, shape: np.einsum('dcij,c->d', w, (0.5 - mean) / std).reshape(shape))
    t.add('embedders_image/finish/cls', ['vision_model.embeddings.class_embedding'], same)
    t.add('embedders_image/finish/positions',
          ['vision_model.embeddings.position_embedding.weight'], same)
    t.add('encoders_image/input_ln/scale', ['vision_model.pre_layrnorm.weight'], same)
    t.add('encoders_image/input_ln/bias', ['vision_model.pre_layrnorm.bias'], same)
    _add_encoder(t, 'image', 'vision_model', vision['num_hidden_layers'], 'post_layernorm')
    t.add('projection_image/kernel', ['visual_projection.weight'], linear)
  # A tower not asked for is skipped whole (its tensors named, not dropped).
  skipped = CLIP_SKIPPED + tuple(
      (rf'^({prefix}\.|{projection}\.)', f'init_from.towers leaves the {m} tower out')
      for m, prefix, projection in (('text', 'text_model', 'text_projection'),
                                    ('image', 'vision_model', 'visual_projection'))
      if m not in towers)
  return t.result(skipped)


def _add_encoder(t: Targets, m: str, prefix: str, depth: int, final_norm: str) -> None:
  t.add_layers(f'encoders_{m}/transformer', depth, CLIP_LAYER,
               source=f'{prefix}.encoder.layers.{{i}}.{{name}}')
  t.add(f'encoders_{m}/transformer/final_ln/scale', [f'{prefix}.{final_norm}.weight'], same)
  t.add(f'encoders_{m}/transformer/final_ln/bias', [f'{prefix}.{final_norm}.bias'], same)


def clip_model_config(path: str) -> dict[str, Any]:
  """The m5_jax config fields a CLIP folder fixes (for configs/clip_init.py)."""
  with open(os.path.join(os.path.expanduser(path), 'config.json')) as f:
    hf_config = json.load(f)
  if hf_config.get('model_type') != 'clip':
    raise ValueError(f"config.json has model_type={hf_config.get('model_type')!r}, not 'clip'")
  text, vision = sub_configs(hf_config)
  return dict(
      text=dict(hidden=text['hidden_size'], heads=text['num_attention_heads'],
                mlp_dim=text['intermediate_size'], layers=text['num_hidden_layers'],
                max_positions=text['max_position_embeddings']),
      image=dict(hidden=vision['hidden_size'], heads=vision['num_attention_heads'],
                 mlp_dim=vision['intermediate_size'], layers=vision['num_hidden_layers'],
                 image_size=vision['image_size'], patch_size=vision['patch_size']),
      activation=HF_ACTIVATIONS.get(text['hidden_act'], text['hidden_act']),
      layer_norm_eps=float(text['layer_norm_eps']),
      projection_dim=hf_config.get('projection_dim', 512),
      vocab_size=len(clip_vocab_order(text['vocab_size'], *special_ids(text))))
