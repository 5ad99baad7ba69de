"""The one model family: M5-MMT and the paper's baselines as configurations.

Per configured modality m (plugin = m5_jax.modalities.get(m)):

  batch[m] --plugin embedder--> tokens [B, L, D], token_mask [B, L]
           (token 0 is the plugin's summary token: BOS or a learned [CLS])
           --ModalityEncoder (config'd depth)--> [B, L, D]
  all modalities --fusion (joint | single_stream | co_attention | none)--> [B, L, D]
           --> pooled[m] = pool(fused tokens); predictions[m] = plugin head(fused tokens)

Missing modalities never take part: `present` is ANDed with `example_mask`, an
absent modality's tokens and [CLS] are masked keys everywhere, its pooled
vector is zero, and rows that can attend to nothing produce zeros, not NaN.

Outputs (all float32 except masks):
  pooled[m]          [B, D]  pooled fused tokens (model.pool: mean | token | last; the
                             modality's own pool when set): the retrieval /
                             classification feature; [B, P] projected when
                             model.projection_dim = P > 0 (CLIP)
  encoder_pooled[m]  [B, D]  the same pooling after the modality encoder, before fusion
                             (what the contrastive loss aligns by default: after a
                             joint fusion an item's text and image [CLS] have seen
                             each other, so contrasting them would leak the pair)
  tokens[m] [B, L, D], token_mask[m] [B, L] (aligned with the plugin's targets),
  present[m] [B]
  predictions[m]     the plugin head's output on tokens[m] (if heads=True), or on
                     the K positions batch[m]['head_positions'] [B, K] gathers
                     (model.heads_at='masked'; head_positions[m] says which)
  contrastive        {'log_scale': [], 'bias': []} learnable logit scale / bias
  itm                {'logits', 'labels', 'valid'} [2B] when loss.itm_weight > 0
                     and train=True (single stream / co-attention matching)
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from m5_jax import modalities
from m5_jax.models import encoder as encoder_lib
from m5_jax.models import fusion as fusion_lib
from m5_jax.models import layers


def encoder_depth(config, name: str) -> int:
  """Depth of modality `name`'s encoder: config.modality.<m>.encoder_layers when set
  (>= 0), else config.model.encoder_layers; always 0 for a single-stream model."""
  if config.model.fusion == 'single_stream':
    return 0
  own = config.modality[name].get('encoder_layers', None) if name in config.modality else None
  return int(own) if own is not None and own >= 0 else int(config.model.encoder_layers)


# What a tower may set for itself (modality.<m>.<key>; absent or None = the model's):
# CLIP's towers differ in width, its text tower is causal and pools its end token
# ('last') and its image tower normalises the embedded tokens before the first block
# (input_norm, the model's eps). Text and table share the word embeddings, so their
# width is model.hidden.
# ('token' for runs saved before model.pool existed: they pooled token 0.)
TOWER_KEYS = {'hidden': None, 'heads': None, 'mlp_dim': None, 'causal': False, 'pool': 'token',
              'input_norm': False}


def tower_setting(config, name: str, key: str):
  """modality.<name>.<key> when set, else model.<key> (else TOWER_KEYS' default)."""
  own = config.modality[name].get(key, None) if name in config.modality else None
  return own if own is not None else config.model.get(key, TOWER_KEYS[key])


def tower_spec(config, name: str, spec: layers.TransformerSpec) -> layers.TransformerSpec:
  return dataclasses.replace(spec, **{k: tower_setting(config, name, k)
                                      for k in ('hidden', 'heads', 'mlp_dim', 'causal')})


def encoder_owners(config) -> dict[str, str]:
  """{tower: owner} from model.shared_encoders ('table=text': the table tower runs the
  text tower's encoder, one set of weights); towers not named have their own."""
  owners = {}
  for pair in filter(None, str(config.model.get('shared_encoders', '')).split(',')):
    tower, _, owner = pair.partition('=')
    if (not owner or tower == owner or tower not in config.modalities
        or owner not in config.modalities or owner in owners):
      raise ValueError(f'model.shared_encoders={config.model.shared_encoders!r}: each pair is '
                       f'tower=owner, two different configured modalities '
                       f'({", ".join(config.modalities)}), and an owner has its own encoder')
    owners[tower] = owner
  if set(owners) & set(owners.values()):
    raise ValueError(f'model.shared_encoders={config.model.shared_encoders!r}: an owner cannot '
                     'itself share another tower\'s encoder')
  return owners


def drop_modalities(rng, present: dict[str, jax.Array], rate: float) -> dict[str, jax.Array]:
  """Drops each present modality of an item with prob `rate`, never its last one."""
  names = list(present)
  stacked = jnp.stack([present[m] for m in names], axis=-1)  # [B, M]
  u = jax.random.uniform(rng, stacked.shape)
  keep = stacked & (u >= rate)
  # An item that would lose everything keeps one present modality, chosen at random.
  fallback = jax.nn.one_hot(jnp.argmax(jnp.where(stacked, u, -1.0), axis=-1), len(names),
                            dtype=jnp.bool_) & stacked
  keep = jnp.where(keep.any(axis=-1, keepdims=True), keep, fallback)
  return {m: keep[:, i] for i, m in enumerate(names)}


class M5Model(nn.Module):
  """See the module docstring. `config` is the full (frozen) experiment config."""
  config: ml_collections.FrozenConfigDict

  def setup(self):
    cfg, model_config = self.config, self.config.model
    self.names = tuple(cfg.modalities)
    if not self.names:
      raise ValueError('config.modalities is empty')
    spec = layers.make_spec(model_config)
    specs = {m: tower_spec(cfg, m, spec) for m in self.names}
    for m in self.names:
      shares_width = m in ('text', 'table') or model_config.fusion != 'none'
      if specs[m].hidden != model_config.hidden and shares_width:
        raise ValueError(f'modality.{m}.hidden={specs[m].hidden} differs from model.hidden='
                         f'{model_config.hidden}: only towers with no fusion (model.fusion=none) '
                         'and no shared word embeddings (not text, table) may have their own width')
    self.word_embed = nn.Embed(
        model_config.vocab_size, model_config.hidden, param_dtype=jnp.float32,
        embedding_init=layers.partitioned(layers.dense_init(), (layers.VOCAB, layers.EMBED)),
        name='word_embed')
    # What the plugins share (see m5_jax/modalities/base.py).
    shared = {'word_embed': self.word_embed, 'dtype': spec.compute_dtype,
              'dropout_rate': model_config.dropout,
              'dropout_bits': spec.dropout_bits,
              'activation': layers.activation(spec.activation)}
    plugins = {m: modalities.get(m) for m in self.names}
    self.embedders = {m: plugins[m].embedder(cfg.modality[m], specs[m].hidden, shared)
                      for m in self.names}
    owners = encoder_owners(cfg)
    self.owners = {m: owners.get(m, m) for m in self.names}
    self.encoders = {m: encoder_lib.ModalityEncoder(
        specs[m], encoder_depth(cfg, m), model_config.cls_token,
        input_norm=tower_setting(cfg, m, 'input_norm')) for m in self.names if self.owners[m] == m}
    self.fusion = fusion_lib.make(model_config.fusion, spec, model_config.fusion_layers, self.names)
    self.heads = {m: plugins[m].head(cfg.modality[m], specs[m].hidden, shared)
                  for m in self.names}
    if model_config.get('projection_dim', 0):  # CLIP: each tower's vector into one shared space
      self.projection = {m: nn.Dense(
          model_config.projection_dim, use_bias=False, dtype=spec.compute_dtype,
          param_dtype=jnp.float32,
          kernel_init=layers.partitioned(layers.dense_init(), (layers.EMBED, None)),
          name=f'projection_{m}') for m in self.names}
    self.log_scale = self.param(
        'contrastive_log_scale', layers.partitioned(nn.initializers.constant(
            math.log(1.0 / cfg.loss.temperature_init)), ()), (), jnp.float32)
    self.bias = self.param(
        'contrastive_bias', layers.partitioned(nn.initializers.constant(
            cfg.loss.sigmoid_bias_init), ()), (), jnp.float32)
    if self.itm_enabled:
      self.itm_head = nn.Dense(1, param_dtype=jnp.float32,
                               kernel_init=layers.partitioned(layers.dense_init(),
                                                              (layers.EMBED, None)),
                               bias_init=layers.partitioned(nn.initializers.zeros, (None,)),
                               name='itm_head')

  @property
  def itm_enabled(self) -> bool:
    return self.config.loss.itm_weight > 0

  def __call__(self, batch, train: bool = False, heads: bool = True, clean_batch=None,
               clean_keep=None):
    """`clean_batch` (training only): the same items unmasked. Its modality encoders'
    pooled vectors come back as `clean_encoder_pooled` (the second view of the
    instance term, objectives.py); the fusion never sees it. `clean_keep`
    {m: bool[B, L]} restricts that view to those embedder tokens
    (objectives.instance_view_keep); `clean_present` then says which items keep a
    content token."""
    model_config = self.config.model
    deterministic = not train
    example_mask = batch['example_mask'].astype(jnp.bool_)
    present = {m: batch[m]['present'].astype(jnp.bool_) & example_mask for m in self.names}
    if train and model_config.modality_dropout > 0:
      present = drop_modalities(self.make_rng('dropout'), present, model_config.modality_dropout)

    streams = {m: self._encode(m, batch[m], present[m], deterministic) for m in self.names}
    num_prefix = {m: self.encoders[self.owners[m]].num_prefix for m in self.names}
    fused = self.fusion(streams, deterministic=deterministic)

    out = {'pooled': {}, 'encoder_pooled': {}, 'tokens': {}, 'token_mask': {}, 'present': present,
           'predictions': {}}
    how = {m: tower_setting(self.config, m, 'pool') for m in self.names}

    def pooled(tokens, mask, m):  # f32[B, D]; 0 where modality m is absent
      vector = pool(tokens, mask, how[m])
      if model_config.get('projection_dim', 0):
        vector = self.projection[m](vector)
      return jnp.where(present[m][:, None], vector, 0.0).astype(jnp.float32)

    for m in self.names:
      p = num_prefix[m]
      encoder_mask = streams[m][1]
      out['encoder_pooled'][m] = pooled(streams[m][0], encoder_mask, m)
      out['pooled'][m] = pooled(fused[m], encoder_mask, m)
      out['tokens'][m] = fused[m][:, p:]
      out['token_mask'][m] = streams[m][1][:, p:]
      if heads:
        tokens = out['tokens'][m]
        positions = batch[m].get('head_positions')  # objectives.mask_batch, heads_at='masked'
        if positions is not None:  # the head at the masked positions only: gather first
          tokens = jnp.take_along_axis(tokens, positions[..., None], axis=1)
          out.setdefault('head_positions', {})[m] = positions
        out['predictions'][m] = self.heads[m](tokens)
    out['contrastive'] = {'log_scale': self.log_scale, 'bias': self.bias}
    if clean_batch is not None:
      keep = clean_keep or {}
      out['clean_encoder_pooled'] = {
          m: pooled(*self._encode(m, clean_batch[m], present[m], deterministic, keep.get(m)), m)
          for m in self.names}
      if keep:
        out['clean_present'] = {m: present[m] & jnp.any(keep[m][:, 1:], axis=1) for m in keep}
    if self.itm_enabled and (train or self.is_initializing()):
      out['itm'] = self._image_text_matching(streams, fused, present, deterministic)
    return out

  def _encode(self, m: str, inputs, present, deterministic: bool, keep=None):
    """Modality m's embedder and encoder -> (tokens [B, L, D], token mask [B, L]);
    `keep` [B, L] hides the other embedder tokens from the encoder and the pooling."""
    tokens, token_mask = self.embedders[m](inputs, deterministic=deterministic)
    token_mask = token_mask.astype(jnp.bool_)
    if keep is not None:
      token_mask = token_mask & keep
    return self.encoders[self.owners[m]](tokens, token_mask, present,
                                         deterministic=deterministic)

  def _image_text_matching(self, streams, fused, present, deterministic):
    """Matched vs mismatched pairs: the first configured modality (the anchor) with
    every other modality rolled by one item along the (global) batch.

    The positive pass is the main forward pass; the negative pass reruns only the
    fusion on the rolled streams. Labels: 1 matched, 0 mismatched; an item counts
    when its anchor and at least one other (rolled) modality are present.
    """
    anchor, others = self.names[0], self.names[1:]
    if not others:
      raise ValueError('image-text matching needs at least two modalities')
    rolled = {m: (s if m == anchor else jax.tree.map(lambda a: jnp.roll(a, 1, axis=0), s))
              for m, s in streams.items()}
    negative = self.fusion(rolled, deterministic=deterministic)
    other_present = jnp.stack([present[m] for m in others], -1)
    valid_pos = present[anchor] & other_present.any(-1)
    valid_neg = present[anchor] & jnp.roll(other_present, 1, axis=0).any(-1)
    logits = jnp.concatenate([self.itm_head(fused[anchor][:, 0]),
                              self.itm_head(negative[anchor][:, 0])], axis=0)[:, 0]
    labels = jnp.concatenate([jnp.ones_like(valid_pos), jnp.zeros_like(valid_neg)])
    return {'logits': logits.astype(jnp.float32), 'labels': labels.astype(jnp.float32),
            'valid': jnp.concatenate([valid_pos, valid_neg])}


def pool(tokens, mask, how: str):
  """[B, L, D] -> [B, D]: the first token ('token'), the mean of the valid ones ('mean')
  or the last valid one ('last': CLIP's text pools its end token).

  'mean' is the default: at initialisation the first token ([CLS]/BOS, the same
  embedding in every item) dominates its own output, so first-token vectors of
  different items are nearly parallel and the contrastive gradient is ~1e-3 of
  that of mean pooling (measured on mini); short budgets then learn nothing.
  """
  if how == 'token':
    return tokens[:, 0]
  if how == 'mean':
    weights = mask.astype(jnp.float32)[..., None]
    return (jnp.sum(tokens.astype(jnp.float32) * weights, axis=1)
            / jnp.maximum(jnp.sum(weights, axis=1), 1.0))
  if how == 'last':  # an item without valid tokens pools to zeros, as with 'mean'
    last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    vector = jnp.take_along_axis(tokens, last[:, None, None], axis=1)[:, 0]
    return jnp.where(mask.any(axis=1)[:, None], vector, 0)
  raise ValueError(f"model.pool must be 'token', 'mean' or 'last', got {how!r}")


def build(config) -> M5Model:
  """The model for a config (full experiment config with modalities/modality/model/loss)."""
  if config.model.fusion not in fusion_lib.FUSIONS:
    raise ValueError(f'unknown model.fusion {config.model.fusion!r}; '
                     f'expected one of {fusion_lib.FUSIONS}')
  if config.loss.itm_weight > 0 and config.model.fusion == 'none':
    raise ValueError('loss.itm_weight > 0 needs a fusion that mixes modalities '
                     "(joint, single_stream or co_attention), not model.fusion='none'")
  if not isinstance(config, ml_collections.FrozenConfigDict):
    config = ml_collections.FrozenConfigDict(config)
  return M5Model(config)
