"""Cross-modal fusion over the per-modality encoder outputs.

All fusions map {modality: (x [B, Lm, D], mask [B, Lm])} to {modality: x'} with
the same shapes, in the order of `names`:

  'joint'          M5-MMT: modality-type embeddings, concatenate every modality's
                   tokens, one transformer over the whole sequence (masked keys
                   of absent modalities and padding are never attended to).
  'single_stream'  VisualBERT / UNITER / VL-BERT: the same module; the family
                   gives it depth-0 modality encoders, so one transformer sees the
                   embedded image and text tokens directly.
  'co_attention'   ViLBERT / LXMERT dual stream: each modality keeps its own
                   stream; every layer does cross-attention from that stream to
                   all other streams, then self-attention, then an MLP (LXMERT's
                   cross-modality layer, generalised from 2 to N streams).
  'none'           two (or N) towers with no interaction: CLIP, image-only,
                   text-only.
"""
from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax.numpy as jnp

from m5_jax.models import layers

FUSIONS = ('joint', 'single_stream', 'co_attention', 'none')


class ModalityTypeEmbedding(nn.Module):
  """Adds a learned vector per modality (its index in `names`) to its tokens."""
  names: tuple[str, ...]

  @nn.compact
  def __call__(self, streams):
    hidden = next(iter(streams.values()))[0].shape[-1]
    table = self.param('embedding', layers.partitioned(layers.dense_init(), (None, layers.EMBED)),
                       (len(self.names), hidden), jnp.float32)
    return {m: (x + table[self.names.index(m)], mask) for m, (x, mask) in streams.items()}


class TransformerFusion(nn.Module):
  """What the transformer fusions share: their fields and the modality-type embedding."""
  spec: layers.TransformerSpec
  num_layers: int
  names: tuple[str, ...]

  def typed_streams(self, streams: Mapping[str, tuple]) -> tuple[dict, list[str]]:
    """(streams plus their modality-type embedding, the present modalities in `names` order)."""
    streams = ModalityTypeEmbedding(self.names, name='type_embedding')(streams)
    return streams, [m for m in self.names if m in streams]


class JointFusion(TransformerFusion):
  """One transformer over every modality's tokens, concatenated."""

  @nn.compact
  def __call__(self, streams: Mapping[str, tuple], *, deterministic: bool = True):
    streams, order = self.typed_streams(streams)
    lengths = [streams[m][0].shape[1] for m in order]
    x = jnp.concatenate([streams[m][0] for m in order], axis=1)
    mask = jnp.concatenate([streams[m][1] for m in order], axis=1)
    x = layers.Encoder(self.spec, self.num_layers, name='transformer')(
        x, mask, deterministic=deterministic)
    out, start = {}, 0
    for m, length in zip(order, lengths):
      out[m] = x[:, start:start + length]
      start += length
    return out


class CoAttentionFusion(TransformerFusion):
  """Per-modality streams exchanging information through cross-attention only."""

  @nn.compact
  def __call__(self, streams: Mapping[str, tuple], *, deterministic: bool = True):
    streams, order = self.typed_streams(streams)
    xs = {m: streams[m][0] for m in order}
    masks = {m: streams[m][1] for m in order}
    block = nn.remat(layers.Block) if self.spec.remat else layers.Block
    for i in range(self.num_layers):
      new = {}
      for m in order:
        others = [other for other in order if other != m]
        if others:
          context = jnp.concatenate([xs[other] for other in others], axis=1)
          context_mask = jnp.concatenate([masks[other] for other in others], axis=1)
        else:  # one stream: nothing to attend to (the safe softmax gives zeros)
          context, context_mask = xs[m], jnp.zeros_like(masks[m])
        new[m] = block(self.spec, cross=True, deterministic=deterministic, name=f'{m}_layer_{i}')(
            xs[m], masks[m], context, context_mask)
      xs = new
    if self.spec.pre_ln:
      xs = {m: layers.layer_norm(self.spec, f'{m}_final_ln')(x) for m, x in xs.items()}
    return xs


class NoFusion(nn.Module):
  @nn.compact
  def __call__(self, streams, *, deterministic: bool = True):
    del deterministic
    return {m: x for m, (x, _) in streams.items()}


def make(kind: str, spec: layers.TransformerSpec, num_layers: int, names: tuple[str, ...],
         name: str = 'fusion') -> nn.Module:
  if kind in ('joint', 'single_stream'):
    return JointFusion(spec, num_layers, names, name=name)
  if kind == 'co_attention':
    return CoAttentionFusion(spec, num_layers, names, name=name)
  if kind == 'none':
    return NoFusion(name=name)
  raise ValueError(f'unknown model.fusion {kind!r}; expected one of {FUSIONS}')
