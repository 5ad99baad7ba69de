"""The per-modality encoder: a [CLS]-style token, then that modality's transformer."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from m5_jax.models import layers


class ModalityEncoder(nn.Module):
  """Embedded tokens [B, L, D] + token mask [B, L] -> encoded [B, P+L, D], mask [B, P+L].

  cls_token='first' (default) pools the embedder's token 0, which every plugin
  makes its summary token (BOS for text/table, a learned [CLS] for media; P = 0).
  cls_token='learned' prepends one more learned vector (P = 1) for a plugin
  without one; its mask is the item's `present` flag, so an absent modality's
  [CLS] is masked out too. `input_norm` puts a LayerNorm (the spec's eps) on the
  tokens before the first block (CLIP's vision tower: pre_layrnorm).
  """
  spec: layers.TransformerSpec
  num_layers: int
  cls_token: str = 'first'
  input_norm: bool = False

  @property
  def num_prefix(self) -> int:
    return {'learned': 1, 'first': 0}[self.cls_token]

  @nn.compact
  def __call__(self, tokens, token_mask, present, *, deterministic: bool = True):
    if self.cls_token not in ('learned', 'first'):
      raise ValueError(f"model.cls_token must be 'learned' or 'first', got {self.cls_token!r}")
    x = tokens.astype(jnp.float32)
    mask = token_mask & present[:, None]
    if self.num_prefix:
      cls = self.param('cls', layers.partitioned(layers.dense_init(), (layers.EMBED,)),
                       (x.shape[-1],), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)
      mask = jnp.concatenate([present[:, None], mask], axis=1)
    if self.input_norm:
      x = layers.layer_norm(self.spec, 'input_ln')(x)
    x = nn.with_logical_constraint(x, layers.ACTIVATION_AXES)
    x = layers.Encoder(self.spec, self.num_layers, name='transformer')(
        x, mask, deterministic=deterministic)
    return x, mask
