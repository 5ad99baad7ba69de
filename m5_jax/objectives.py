"""Pretraining objectives: masking, masked modeling, contrastive, matching, SCALE.

  mask_batch(batch, rng, config) -> (masked_batch, targets)
  losses(outputs, targets, config) -> {term: (numerator, denominator)}
  total_loss(terms, config) -> scalar = sum_k weight_k * num_k / max(den_k, 1)

Terms (fp32 sums over the GLOBAL batch; under jit with batch-sharded global
arrays every reduction, including the [B, B] contrastive logits, is global):

  masked_<m>             the plugin's masked_loss on masked tokens of modality m;
                         denominator = global count of masked tokens.
  contrastive_<a>_<b>    every pair of configured modalities (config order);
                         softmax InfoNCE (both directions averaged) or sigmoid
                         (SigLIP: sum over each row, mean over rows). An item
                         missing a or b is removed from rows AND columns.
                         Denominator = number of valid rows.
  instance_<m>           in-modality instance discrimination: InfoNCE between the
                         masked view's and a second view's encoder vectors of
                         modality m (rows = items with m present; the second view
                         is the clean item, or with loss.instance_view='complement'
                         only the tokens the first view's masking hid). Cross-modal
                         pairs can only align what modalities share (the
                         category); this term keeps what tells one product from
                         another inside a modality (brand, colour, material),
                         which fine-grained retrieval needs. Needs the model's
                         `clean_encoder_pooled` (train step passes clean_batch).
  itm                    image-text matching (binary cross-entropy) for single
                         and dual stream models.

SCALE (config.loss.scale_weighting): per item, G = cosine-similarity matrix of
its present modalities' vectors, G <- G @ softmax(G) (softmax row-wise, matrix
product), rows L2-normalised; absent modalities are left out of G (their rows
and columns are zero). G from the contrastive vectors scales the logits of pair
(a, b): row i of the a->b logits by G_i[a, b], of b->a by G_i[b, a]. The diagonal
of a second G from the fused vectors scales each item's masked-modeling loss
(the denominator stays the unweighted token count). The weights are computed
under stop_gradient: they re-weight the tasks per sample; letting gradients flow
through them would let the model lower its loss by shrinking its own weights.
"""
from __future__ import annotations

import itertools
import zlib

import jax
import jax.numpy as jnp

from m5_jax import dropout as dropout_lib
from m5_jax import modalities

EPS = 1e-6


# ----------------------------------------------------------------- term names
def pairs(config) -> list[tuple[str, str]]:
  return list(itertools.combinations(config.modalities, 2))


def term_names(config) -> list[str]:
  names = [f'masked_{m}' for m in config.modalities]
  names += [f'contrastive_{a}_{b}' for a, b in pairs(config)]
  names += [f'instance_{m}' for m in config.modalities]
  return names + ['itm']


def term_weight(config, name: str) -> float:
  """config.loss.weights.<name> if set, else the default weight of its kind."""
  overrides = config.loss.get('weights', None) or {}
  unknown = set(overrides) - set(term_names(config))
  if unknown:
    raise ValueError(f'config.loss.weights has unknown term(s) {sorted(unknown)}; '
                     f'known: {", ".join(term_names(config))}')
  if name in overrides:
    return float(overrides[name])
  if name.startswith('masked_'):
    return float(config.loss.masked_weight)
  if name.startswith('contrastive_'):
    return float(config.loss.contrastive_weight)
  if name.startswith('instance_'):
    return float(config.loss.get('instance_weight', 0.0))
  if name == 'itm':
    return float(config.loss.itm_weight)
  raise ValueError(f'unknown loss term {name!r}')


def uses_clean_view(config) -> bool:
  """Whether the loss needs the unmasked view's encoder vectors (instance terms)."""
  return any(term_weight(config, f'instance_{m}') > 0 for m in config.modalities)


# model.dropout_rng: the PRNG behind dropout masks. threefry (JAX's default) is
# counter-based and the same on every backend; rbg / unsafe_rbg draw from XLA's
# RngBitGenerator, far cheaper per bit on CPU and GPU (benchmarks/RESULTS.md) but
# their streams may differ between backends and XLA versions (unsafe_rbg also
# between shardings): exact replays across machines need threefry. hash
# (m5_jax/dropout.py) hashes each element's position under a threefry-derived key:
# the same on every backend and sharding, and the cheapest on XLA:CPU.
DROPOUT_RNGS = ('threefry', 'rbg', 'unsafe_rbg', 'hash')


def dropout_key(rng, config):
  """The step's dropout key in the PRNG that config.model.dropout_rng names."""
  impl = config.model.get('dropout_rng', 'threefry')
  if impl not in DROPOUT_RNGS:
    raise ValueError(f'unknown model.dropout_rng {impl!r}; expected one of {DROPOUT_RNGS}')
  if impl == 'threefry':
    return rng
  if impl == 'hash':
    return jax.random.wrap_key_data(jax.random.bits(rng, (2,), jnp.uint32),
                                    impl=dropout_lib.HASH_PRNG)
  return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl=impl)


INSTANCE_VIEWS = ('clean', 'complement', 'auto')


def instance_view_keep(targets, config):
  """The tokens the instance terms' second view keeps, {m: bool[B, L]} for the
  modalities whose view is 'complement' (None if none is): the summary token and
  the tokens masking hid from the first view (targets' weights > 0, aligned with
  the embedder's tokens by the plugin contract). The two views then share no
  content token, so they cannot be matched by the listing's own per-token noise (a
  region's noise): only by what is repeated across the item's tokens, which is
  what its other listings share. 'clean' is the whole unmasked item.

  loss.instance_view: 'clean' or 'complement' for every modality, or 'auto' (the
  M5-MMT and SCALE default): each plugin's `instance_view` - complement for image
  and video, clean for text, table and audio, sequences whose few hidden tokens
  cannot stand for the item (complement everywhere halved text's fine retrieval on
  both releases, and on speech audio cost the real-media release 10 points of fine
  mAP@10; benchmarks/results/learning.md sections 10 and 12). A modality without
  targets (masked weight 0) keeps its clean view."""
  view = config.loss.get('instance_view', 'clean')
  if view not in INSTANCE_VIEWS:
    raise ValueError(f'loss.instance_view must be one of {INSTANCE_VIEWS}, got {view!r}')
  keep = {}
  for m, t in targets.items():
    own = getattr(modalities.get(m), 'instance_view', 'clean')
    if (own if view == 'auto' else view) == 'complement':
      keep[m] = (t['weights'] > 0).at[:, 0].set(True)
  return keep or None


def pretraining_outputs(model, variables, masked, batch, rng, config, targets):
  """The training forward pass on the masked batch; the clean batch rides along as
  the second view when the instance terms need it (`targets` from mask_batch say
  which of its tokens that view keeps, `instance_view_keep`)."""
  clean, keep = None, None
  if uses_clean_view(config):
    clean, keep = batch, instance_view_keep(targets, config)
  return model.apply(variables, masked, train=True, clean_batch=clean, clean_keep=keep,
                     rngs={'dropout': dropout_key(rng, config)})


def head_rows(config) -> dict[str, int]:
  """{modality: K}: with model.heads_at='masked', the modalities whose head runs at K
  gathered positions per item (K = the plugin's max_masked_tokens bound, when it is
  below the token count); the rest keep the head at every position."""
  heads_at = config.model.get('heads_at', 'all')
  if heads_at not in ('all', 'masked'):
    raise ValueError(f"model.heads_at must be 'all' or 'masked', got {heads_at!r}")
  if heads_at == 'all':
    return {}
  rows = {}
  for m in config.modalities:
    plugin = modalities.get(m)
    bound = getattr(plugin, 'max_masked_tokens', lambda cfg: None)(config.modality[m])
    if bound is not None and bound < plugin.num_tokens(config.modality[m]):
      rows[m] = int(bound)
  return rows


# ------------------------------------------------------------------- masking
def _modality_seed(name: str) -> int:
  # Stable per-name stream: adding a modality does not change another's masks.
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def mask_batch(batch, rng, config):
  """Applies each plugin's mask_for_pretraining (rng folded per modality).

  A modality whose masked-modeling weight is 0 is left unmasked and gets no
  targets (e.g. CLIP trains on clean inputs).
  """
  masked, targets = dict(batch), {}
  rows = head_rows(config)
  for m in config.modalities:
    if term_weight(config, f'masked_{m}') == 0:
      continue
    plugin = modalities.get(m)
    masked[m], targets[m] = plugin.mask_for_pretraining(
        batch[m], jax.random.fold_in(rng, _modality_seed(m)), config.modality[m])
    if m in rows:  # where the model applies the head: every target, then other tokens
      masked[m]['head_positions'] = jax.lax.top_k(targets[m]['weights'], rows[m])[1]
  return masked, targets


def at_head_positions(targets, positions):
  """The targets' [B, L, ...] fields at positions [B, K] (the head's rows)."""
  length = targets['weights'].shape[1]

  def take(x):
    if x.ndim < 2 or x.shape[1] != length:
      return x
    return jnp.take_along_axis(x, positions.reshape(positions.shape + (1,) * (x.ndim - 2)),
                               axis=1)

  return {k: take(v) for k, v in targets.items()}


# --------------------------------------------------------------- contrastive
def l2_normalize(x, axis=-1):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), EPS * EPS))


def pair_logits(za, zb, log_scale, max_log_scale=None):
  """[B, B] fp32 logits exp(log_scale) * <za_i, zb_j> of L2-normalised vectors."""
  if max_log_scale is not None:
    log_scale = jnp.minimum(log_scale, max_log_scale)
  sim = jnp.einsum('id,jd->ij', l2_normalize(za), l2_normalize(zb),
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.exp(log_scale.astype(jnp.float32)) * sim


def softmax_contrastive(logits, valid, row_scale_ab=None, row_scale_ba=None,
                        hard_negatives=0.0):
  """InfoNCE over valid items, both directions averaged. -> (sum over valid rows, count).

  hard_negatives = beta > 0 re-weights each row's negatives by exp(beta * logit),
  normalised to mean 1 over the row's valid negatives and held constant
  (Robinson et al. 2021, "Contrastive learning with hard negative samples"): the
  negatives most like the anchor (on mini and in real batches: the same
  category) weigh most, so the term cannot be met by category alone."""
  valid = valid.astype(jnp.bool_)
  pair_valid = valid[:, None] & valid[None, :]
  lowest = jnp.finfo(jnp.float32).min

  def direction(l, scale):
    if scale is not None:
      l = l * scale[:, None]
    if hard_negatives:
      negative = pair_valid & ~jnp.eye(l.shape[0], dtype=jnp.bool_)
      hardness = jax.lax.stop_gradient(hard_negatives * l)
      log_count = jnp.log(jnp.maximum(jnp.sum(negative, -1, keepdims=True), 1).astype(l.dtype))
      log_weight = hardness - jax.nn.logsumexp(jnp.where(negative, hardness, lowest), -1,
                                               keepdims=True) + log_count
      l = jnp.where(negative, l + log_weight, l)
    l = jnp.where(pair_valid, l, lowest)
    return -jnp.diagonal(jax.nn.log_softmax(l, axis=-1))

  per_row = 0.5 * (direction(logits, row_scale_ab) + direction(logits.T, row_scale_ba))
  return jnp.sum(jnp.where(valid, per_row, 0.0)), jnp.sum(valid).astype(jnp.float32)


def sigmoid_contrastive(logits, bias, valid, row_scale=None):
  """SigLIP over valid items: sum over each row, mean over rows -> (sum, count)."""
  valid = valid.astype(jnp.bool_)
  pair_valid = valid[:, None] & valid[None, :]
  if row_scale is not None:
    logits = logits * row_scale[:, None]
  labels = 2.0 * jnp.eye(logits.shape[0], dtype=jnp.float32) - 1.0
  per_pair = -jax.nn.log_sigmoid(labels * (logits + bias))
  per_row = jnp.sum(jnp.where(pair_valid, per_pair, 0.0), axis=-1)
  return jnp.sum(jnp.where(valid, per_row, 0.0)), jnp.sum(valid).astype(jnp.float32)


# --------------------------------------------------------------------- SCALE
def self_harmonised_weights(vectors, present):
  """vectors [B, M, D], present [B, M] -> G [B, M, M] (see module docstring)."""
  present = present.astype(jnp.bool_)
  pm = present[:, :, None] & present[:, None, :]
  z = l2_normalize(vectors)
  g = jnp.where(pm, jnp.einsum('bmd,bnd->bmn', z, z, precision=jax.lax.Precision.HIGHEST), 0.0)
  s = jax.nn.softmax(jnp.where(pm, g, jnp.finfo(jnp.float32).min), axis=-1)
  s = jnp.where(pm, s, 0.0)
  g = jnp.einsum('bmn,bnk->bmk', g, s, precision=jax.lax.Precision.HIGHEST)
  g = l2_normalize(g)
  return jnp.where(pm, g, 0.0)


def _stacked(vectors: dict, present: dict, names):
  return (jnp.stack([vectors[m] for m in names], axis=1),
          jnp.stack([present[m] for m in names], axis=1))


# -------------------------------------------------------------------- losses
def losses(outputs, targets, config):
  """{term: (numerator, denominator)}, fp32 sums over the global batch. Which items
  have a modality (example_mask, modality dropout included) comes from outputs['present']."""
  loss_config, names = config.loss, tuple(config.modalities)
  present = outputs['present']
  terms = {}
  on_encoder = loss_config.contrastive_on == 'encoder'
  contrastive_vectors = outputs['encoder_pooled' if on_encoder else 'pooled']
  if loss_config.contrastive_on not in ('encoder', 'fusion'):
    raise ValueError("loss.contrastive_on must be 'encoder' or 'fusion', "
                     f'got {loss_config.contrastive_on!r}')

  g_masked = g_pairs = None
  if loss_config.scale_weighting:
    g_pairs = jax.lax.stop_gradient(self_harmonised_weights(
        *_stacked(contrastive_vectors, present, names)))
    g_masked = jax.lax.stop_gradient(self_harmonised_weights(
        *_stacked(outputs['pooled'], present, names)))

  for m in names:
    if m not in targets or term_weight(config, f'masked_{m}') == 0:
      continue
    plugin = modalities.get(m)
    # Never learn on tokens the model could not see (absent, padding, dropped).
    weights = targets[m]['weights'] * outputs['token_mask'][m].astype(jnp.float32)
    t = dict(targets[m], weights=weights)
    if m in outputs.get('head_positions', {}):
      t = at_head_positions(t, outputs['head_positions'][m])
      weights = t['weights']
    num, den = plugin.masked_loss(outputs['predictions'][m], t, config.modality[m])
    if g_masked is not None:
      i = names.index(m)
      t_scaled = dict(t, weights=weights * g_masked[:, i, i][:, None])
      num, _ = plugin.masked_loss(outputs['predictions'][m], t_scaled, config.modality[m])
    terms[f'masked_{m}'] = (num.astype(jnp.float32), den.astype(jnp.float32))

  for a, b in pairs(config):
    name = f'contrastive_{a}_{b}'
    if term_weight(config, name) == 0:
      continue
    logits = pair_logits(contrastive_vectors[a], contrastive_vectors[b],
                         outputs['contrastive']['log_scale'], loss_config.max_log_scale)
    valid = present[a] & present[b]
    ia, ib = names.index(a), names.index(b)
    scale_ab = g_pairs[:, ia, ib] if g_pairs is not None else None
    scale_ba = g_pairs[:, ib, ia] if g_pairs is not None else None
    if loss_config.contrastive == 'softmax':
      terms[name] = softmax_contrastive(logits, valid, scale_ab, scale_ba)
    elif loss_config.contrastive == 'sigmoid':
      terms[name] = sigmoid_contrastive(logits, outputs['contrastive']['bias'], valid, scale_ab)
    else:
      raise ValueError("loss.contrastive must be 'softmax' or 'sigmoid', "
                       f'got {loss_config.contrastive!r}')

  for m in names:
    name = f'instance_{m}'
    if term_weight(config, name) == 0:
      continue
    if 'clean_encoder_pooled' not in outputs:
      raise ValueError(f'{name} needs the clean view: call the model with clean_batch=')
    # Both views from the modality encoder (the feature the evaluators use by default),
    # whatever loss.contrastive_on says for the cross-modal pairs.
    logits = pair_logits(outputs['encoder_pooled'][m], outputs['clean_encoder_pooled'][m],
                         outputs['contrastive']['log_scale'], loss_config.max_log_scale)
    # 'complement' view: an item whose masking hid nothing of m has no second view.
    valid = present[m] & outputs.get('clean_present', {}).get(m, True)
    terms[name] = softmax_contrastive(logits, valid,
                                      hard_negatives=loss_config.get('instance_hard_negatives', 0.0))

  if term_weight(config, 'itm') > 0 and 'itm' in outputs:
    itm = outputs['itm']
    logits, labels = itm['logits'].astype(jnp.float32), itm['labels']
    bce = -(labels * jax.nn.log_sigmoid(logits) + (1 - labels) * jax.nn.log_sigmoid(-logits))
    terms['itm'] = (jnp.sum(jnp.where(itm['valid'], bce, 0.0)),
                    jnp.sum(itm['valid']).astype(jnp.float32))
  return terms


def total_loss(terms, config):
  """sum_k weight_k * num_k / max(den_k, 1); a term with no items contributes 0."""
  total = jnp.float32(0.0)
  for name, (num, den) in terms.items():
    total += term_weight(config, name) * num / jnp.maximum(den, 1.0)
  return total
