"""The modality plugin contract, and the building blocks the built-in plugins share.

A modality (text, table, image, video, audio, or a new one) is a module
`m5_jax/modalities/<name>.py` that defines a module-level `PLUGIN` object
implementing `Modality` below. `m5_jax.modalities.get(name)` imports it by name,
so a sixth modality is one new file plus config lines (`config.modalities` and
`config.modality.<name>`); a plugin living outside the package is reached by its
module path (see m5_jax/modalities/__init__.py).

Data flow for one modality `m` (B = batch, L = num_tokens(cfg)):

  TFDS example --preprocess (tf.data, host)--> batch[m] (fields of batch_spec)
  batch[m] --mask_for_pretraining (jax)--> masked batch[m], targets
  masked batch[m] --embedder (flax)--> tokens [B, L, D], token_mask [B, L]
  ... per-modality encoder, fusion (m5_jax/models) ...
  fused tokens [B, L, D] --head (flax)--> predictions --masked_loss--> (sum, count)

Conventions every plugin follows:
  * `batch[m]['present']` bool[B] says whether the item has this modality at all.
    An absent modality has all-False token masks; the model excludes it by
    attention masks (never attends to zeros).
  * `token_mask` is False for padding tokens and for every token of an absent
    modality.
  * Token 0 of every embedder output is the modality's summary token: BOS for
    text and table, a learned [CLS] embedding for media. It is valid exactly when
    the item has the modality, and it is never a masked-modeling target. The
    model pools it (one vector per present modality).
  * Dense media features travel host -> device in float16, as the builds store
    them (half the bytes); embedders cast them to the compute dtype on the
    device, and targets and losses are float32.
  * Tokens from embedders and heads' inputs are [B, L, D] in the compute dtype;
    masked-modeling targets, token positions and weights share that L.
  * `mask_for_pretraining` returns targets with `weights` float32[B, L]: 1 at the
    tokens whose masked-modeling loss counts (masked, real, of present items), 0
    elsewhere. Other target keys are the plugin's own.
  * `masked_loss` returns an fp32 (numerator, denominator) pair of *sums* over the
    global batch; the caller divides once (global count of masked tokens) and
    accumulates both across microbatches. Nothing masked gives (0, 0), no NaN.
  * Parameters carry logical axis names (embed, mlp, heads, kv, vocab; None =
    replicated) and activations are constrained to (batch, length, embed), so
    training places them on a mesh with `nn.logical_axis_rules`.

`shared` (passed to `embedder` and `head`) holds what the model shares across
modalities, as a plain mapping:
  'word_embed'    nn.Embed over the tokenizer vocabulary (text and table share it;
                  the table adds its own key/value type embeddings)
  'dtype'         compute dtype (default float32; bfloat16 for bf16 matmuls).
                  Parameters are always float32; losses are always float32.
  'dropout_rate'  embedding dropout (default 0.0)
  'activation'    the heads' nonlinearity, a function (model.activation; default
                  the exact erf GELU)

A plugin may also define `max_masked_tokens(cfg) -> int | None`: an upper bound
on the masked-modeling targets per item. With model.heads_at='masked' the model
then applies the head only at that many gathered positions (masked ones first)
instead of all L, which gives the same loss at a fraction of the head's cost.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from m5_jax import dropout as dropout_lib

# (shape without the batch dim, numpy dtype name). E.g. {'ids': ((36,), 'int32')}.
FieldSpec = tuple[tuple[int, ...], str]

ACTIVATION_AXES = ('batch', 'length', 'embed')


class Modality(Protocol):
  """What a modality plugin provides. See the module docstring for the flow."""

  name: str  # key in the batch and in configs, e.g. 'text'
  code: str  # one letter for modality-set strings, e.g. 't' in 'itpva'
  # The instance terms' second view under loss.instance_view='auto' (objectives.py):
  # 'complement' where every token repeats the item's identity (an object's regions,
  # a clip's frames), 'clean' where the tokens are a sequence of different things
  # (a title's words, speech): the few hidden ones alone cannot stand for the item.
  instance_view: str

  def default_config(self) -> ml_collections.ConfigDict:
    """This modality's config (lengths, input form, encoder depth, masking).

    `encoder_layers=None` means the model size's default depth.
    """

  def batch_spec(self, cfg: ml_collections.ConfigDict) -> Mapping[str, FieldSpec]:
    """The fields of batch[name] (always includes 'present': ((), 'bool'))."""

  def num_tokens(self, cfg: ml_collections.ConfigDict) -> int:
    """L: how many tokens the embedder emits per item (summary token included)."""

  def preprocess(self, example: Mapping[str, Any], cfg: ml_collections.ConfigDict,
                 tokenizer: Any) -> dict[str, Any]:
    """tf.data side: one decoded TFDS example -> batch_spec fields (tf tensors, padded).

    `tokenizer` is a `text.SentencePieceTokenizer`, anything with its
    `tokenize(tf.string[N]) -> tf.RaggedTensor int32` method, or a
    sentencepiece.SentencePieceProcessor / model path / model bytes (which
    `text.as_tokenizer` wraps); media ignore it.
    """

  def embedder(self, cfg: ml_collections.ConfigDict, hidden: int, shared: Mapping[str, Any]):
    """A flax module: __call__(inputs: dict, *, deterministic: bool) -> (tokens, token_mask)."""

  def mask_for_pretraining(self, inputs: Mapping[str, Any], rng, cfg: ml_collections.ConfigDict
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(masked inputs, targets); targets['weights'] float32[B, L] (see module doc)."""

  def head(self, cfg: ml_collections.ConfigDict, hidden: int, shared: Mapping[str, Any]):
    """A flax module: __call__(fused tokens [B, L, D]) -> predictions [B, L, ...]."""

  def masked_loss(self, predictions, targets: Mapping[str, Any], cfg: ml_collections.ConfigDict):
    """(numerator, denominator) fp32 scalars summed over the (global) batch."""


@dataclasses.dataclass(frozen=True)
class ModalityOutputs:
  """What the model returns per modality (see m5_jax/models)."""
  tokens: Any      # [B, L, D] fused token outputs
  token_mask: Any  # [B, L] bool
  pooled: Any      # [B, D] one vector per item for this modality
  present: Any     # [B] bool


# ----------------------------------------------------------------------------
# Building blocks shared by the built-in plugins (a new plugin may use them).
# ----------------------------------------------------------------------------

def compute_dtype(shared: Mapping[str, Any]):
  return shared.get('dtype', jnp.float32)


def exact_gelu(x):
  return nn.gelu(x, approximate=False)


def head_activation(shared: Mapping[str, Any]):
  return shared.get('activation', exact_gelu)


def constrain(x):
  """Places [B, L, D] activations by logical axes (no-op without axis rules)."""
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


def dense(features: int, axes: tuple[str | None, str | None], dtype, name: str | None = None,
          use_bias: bool = True) -> nn.Dense:
  """nn.Dense with fp32 parameters annotated with logical axes (in, out)."""
  return nn.Dense(
      features, dtype=dtype, param_dtype=jnp.float32, use_bias=use_bias, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)))


def layer_norm(dtype, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=1e-12, dtype=dtype, param_dtype=jnp.float32, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('embed',)))


def embedding_param(module: nn.Module, name: str, shape: tuple[int, ...]):
  """A learned table (positions, types, [CLS]) in fp32, last axis 'embed'."""
  axes = (None,) * (len(shape) - 1) + ('embed',)
  init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), axes)
  return module.param(name, init, shape, jnp.float32)


class FinishTokens(nn.Module):
  """Shared embedder tail: optional learned [CLS], positions, LayerNorm, dropout.

  Takes content tokens [B, N, D] and their mask [B, N] and the item presence
  [B]; returns ([B, L, D], [B, L]) with L = N (+1 if add_cls). The mask is
  False everywhere for absent items. `norm=False` leaves out the LayerNorm (ViT
  has none before its pre-LN encoder, so a ViT checkpoint loads exactly).
  """
  add_cls: bool
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  dropout_bits: int = 32           # model.dropout_bits (m5_jax/dropout.py)
  add_positions: bool = True
  norm: bool = True

  @nn.compact
  def __call__(self, tokens, mask, present, *, deterministic: bool):
    batch, _, hidden = tokens.shape
    tokens = tokens.astype(self.dtype)
    if self.add_cls:
      cls = embedding_param(self, 'cls', (1, 1, hidden)).astype(self.dtype)
      tokens = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, hidden)), tokens], axis=1)
      mask = jnp.concatenate([jnp.ones((batch, 1), bool), mask], axis=1)
    if self.add_positions:
      positions = embedding_param(self, 'positions', (tokens.shape[1], hidden))
      tokens = tokens + positions.astype(self.dtype)[None]
    if self.norm:
      tokens = layer_norm(self.dtype, name='norm')(tokens)
    tokens = dropout_lib.dropout(self.dropout_rate, self.dropout_bits)(
        tokens, deterministic=deterministic)
    return constrain(tokens), jnp.logical_and(mask, present[:, None])


class Embedder(nn.Module):
  """Base of the built-in embedders: the modality's config, the model width, the
  model's `shared` pieces, and `finish`, the one place their tail is built."""
  cfg: ml_collections.ConfigDict
  hidden: int
  shared: Any

  def finish(self, tokens, mask, present, *, deterministic: bool, add_cls: bool = True,
             **options):
    """FinishTokens (named 'finish': checkpoints' parameter paths) in the compute dtype
    with the model's embedding dropout; `options` are its add_positions and norm."""
    return FinishTokens(add_cls=add_cls, dtype=compute_dtype(self.shared), name='finish',
                        dropout_rate=self.shared.get('dropout_rate', 0.0),
                        dropout_bits=self.shared.get('dropout_bits', 32), **options)(
                            tokens, mask, present, deterministic=deterministic)


def round_half_up(x):
  """The one rounding rule for 'how many tokens to mask' (python and jnp alike)."""
  if isinstance(x, (int, float)):
    return int(math.floor(x + 0.5))
  return jnp.floor(x + 0.5).astype(jnp.int32)


def num_to_mask(num_valid, prob: float):
  """max(1, round(prob * n)) for n > 0, else 0 (as in BERT's data generator)."""
  if isinstance(num_valid, int):
    return 0 if num_valid == 0 else max(1, round_half_up(prob * num_valid))
  count = jnp.maximum(1, round_half_up(prob * num_valid.astype(jnp.float32)))
  return jnp.where(num_valid > 0, count, 0)


def select_random(valid, rng, prob: float):
  """bool like `valid` [B, N]: exactly num_to_mask(n_b, prob) random valid entries per row."""
  scores = jax.random.uniform(rng, valid.shape)
  scores = jnp.where(valid, scores, 2.0)  # invalid entries rank last
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  count = num_to_mask(valid.sum(-1), prob)
  return jnp.logical_and(valid, ranks < count[:, None])


def normalize_per_token(x, eps: float = 1e-6):
  """Zero mean, unit variance over the last axis (MAE's normalised-pixel target)."""
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def regression_loss(predictions, features, weights):
  """(sum over masked tokens of the per-token mean squared error, number of masked tokens)."""
  predictions = predictions.astype(jnp.float32)
  per_token = jnp.mean(jnp.square(predictions - features.astype(jnp.float32)), axis=-1)
  weights = weights.astype(jnp.float32)
  return jnp.sum(jnp.where(weights > 0, per_token, 0.0) * weights), jnp.sum(weights)


def contrastive_token_loss(predictions, features, weights, max_per_row: int, temperature: float):
  """Masked-token classification: pick the true original among the batch's masked tokens.

  NCE as in HERO's MFM-NCE / UNITER's MRFR-as-classification: each masked
  token's prediction is scored (cosine / temperature) against the original
  features of every masked token in the batch; the loss is the cross-entropy of
  its own original. `max_per_row` bounds masked tokens per item (a static shape).
  Returns (sum of CE over masked tokens, number of masked tokens).
  """
  batch, length = weights.shape
  k = min(max_per_row, length)
  _, idx = jax.lax.top_k(weights.astype(jnp.float32), k)          # [B, K] masked first
  take = lambda x: jnp.take_along_axis(x, idx[..., None], axis=1)
  pred = take(predictions.astype(jnp.float32)).reshape(batch * k, -1)
  feat = take(features.astype(jnp.float32)).reshape(batch * k, -1)
  w = jnp.take_along_axis(weights.astype(jnp.float32), idx, axis=1).reshape(-1)
  unit = lambda x: x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)
  logits = unit(pred) @ unit(feat).T / temperature
  logits = jnp.where(w[None, :] > 0, logits, -1e9)                # only masked candidates
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.diagonal(log_probs)
  return jnp.sum(jnp.where(w > 0, ce, 0.0) * w), jnp.sum(w)


class FeatureHead(nn.Module):
  """Masked feature modeling head: Dense-GELU-LayerNorm-Dense to the target size."""
  out_dim: int
  hidden: int
  dtype: Any = jnp.float32
  activation: Any = exact_gelu

  @nn.compact
  def __call__(self, tokens, *, deterministic: bool = True):
    del deterministic
    x = dense(self.hidden, ('embed', 'mlp'), self.dtype, name='transform')(constrain(tokens))
    x = layer_norm(self.dtype, name='norm')(self.activation(x))
    # The output size is the feature size, never the vocab: keep it unsharded.
    return dense(self.out_dim, ('mlp', None), self.dtype, name='out')(x)


class MaskedFeatureModality:
  """Masking, head and loss for modalities whose tokens are feature vectors.

  Regions and frames repeat the item's content, so the instance terms' second view
  may be the hidden tokens alone (instance_view; audio, a sequence, overrides it).

  Subclasses (image, video, audio) describe their tokens; this class masks a
  `mask_prob` share of the real tokens of present items by zeroing their inputs
  and sets targets to the original token features: regression (per-token MSE)
  or classification (in-batch NCE), chosen by cfg.target. Subclasses provide:

    content_mask(inputs, cfg) -> bool[B, N]        real content tokens (no [CLS])
    content_features(inputs, cfg) -> [B, N, F]     what a masked token must predict
                                                   (float16 as stored or float32; the
                                                   targets are made in float32)
    zero_content(inputs, selected [B, N], cfg) -> inputs with those tokens zeroed
    feature_dim(cfg) -> F
  and may override should_normalize_target(cfg) (default: cfg.normalize_target,
  where None means normalise raw-form tokens (pixels, frames, mel patches) only).
  """
  instance_view = 'complement'

  def should_normalize_target(self, cfg) -> bool:
    if cfg.normalize_target is None:
      return cfg.get('form') == 'raw'
    return bool(cfg.normalize_target)

  def mask_for_pretraining(self, inputs, rng, cfg):
    valid = jnp.logical_and(self.content_mask(inputs, cfg), inputs['present'][:, None])
    selected = select_random(valid, rng, cfg.mask_prob)
    features = self.content_features(inputs, cfg).astype(jnp.float32)
    if self.should_normalize_target(cfg):
      features = normalize_per_token(features)
    pad = lambda x: jnp.pad(x, [(0, 0), (1, 0)] + [(0, 0)] * (x.ndim - 2))  # [CLS] slot
    targets = {'features': pad(features), 'weights': pad(selected.astype(jnp.float32))}
    return self.zero_content(dict(inputs), selected, cfg), targets

  def head(self, cfg, hidden, shared):
    return FeatureHead(self.feature_dim(cfg), hidden, compute_dtype(shared),
                       head_activation(shared))

  def max_masked_tokens(self, cfg) -> int:
    return num_to_mask(self.num_tokens(cfg) - 1, cfg.mask_prob)  # [CLS] is never a target

  def masked_loss(self, predictions, targets, cfg):
    if cfg.target == 'regression':
      return regression_loss(predictions, targets['features'], targets['weights'])
    if cfg.target == 'classification':
      max_per_row = num_to_mask(self.num_tokens(cfg) - 1, cfg.mask_prob)
      return contrastive_token_loss(predictions, targets['features'], targets['weights'],
                                    max_per_row, cfg.nce_temperature)
    raise ValueError(f'{self.name}: target must be regression|classification, got {cfg.target!r}')


def check_form(name: str, cfg) -> str:
  if cfg.form not in ('raw', 'features'):
    raise ValueError(f'modality.{name}.form must be raw|features, got {cfg.form!r}')
  return cfg.form
