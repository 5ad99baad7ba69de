"""Transformer building blocks with logical axes, boolean masks and safe softmax.

Every parameter carries logical axis names (embed, mlp, heads, kv, vocab, and
'layers' for scanned stacks) and key activations are constrained to
(batch, length, embed), so training can place any size on any mesh through
`nn.logical_axis_rules`. Parameters are fp32; `dtype` is the compute dtype of the
matmuls (bf16 in training); softmax and layer-norm statistics run in fp32.

Masks are booleans broadcastable to [B, heads, Lq, Lk], True = may attend. A
query row that may attend to nothing (a padding token, the [CLS] of an absent
modality, a cross-attention with no partner) gets a zero attention output instead
of NaN or a uniform average over padding.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from m5_jax.dropout import dropout

Dtype = Any

# Logical axis names used by this package (map them to mesh axes in training).
BATCH, LENGTH, EMBED, MLP, HEADS, KV, VOCAB, LAYERS = (
    'batch', 'length', 'embed', 'mlp', 'heads', 'kv', 'vocab', 'layers')

ACTIVATION_AXES = (BATCH, LENGTH, EMBED)

# model.activation: the MLP (and head) nonlinearity, by name. 'gelu' is BERT's exact
# erf GELU (the reference numerics: HF known-answer tests need it). 'gelu_tanh' is
# the tanh approximation (GPT-2, ViT/big_vision): at most 4.7e-4 from the exact one
# in absolute value (at |x| ~ 2; tests/test_speed_options.py checks), and much
# cheaper on XLA:CPU, which expands erf into a long polynomial
# (benchmarks/RESULTS.md has the A/B). Add a choice here and in
# config_lib.ACTIVATIONS.
ACTIVATIONS = {
    'gelu': lambda x: nn.gelu(x, approximate=False),
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),  # CLIP's (OpenAI's) GELU stand-in
}
# model.attention: 'einsum' (two einsums around the safe softmax) or 'dot_product'
# (jax.nn.dot_product_attention: XLA's fused attention, cuDNN's on a GPU; no
# attention dropout).
ATTENTION = ('einsum', 'dot_product')


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f'unknown model.activation {name!r}; expected one of {", ".join(ACTIVATIONS)}')
  return ACTIVATIONS[name]


def dense_init(std: float = 0.02):
  return nn.initializers.normal(stddev=std)


def partitioned(init, axes):
  return nn.with_logical_partitioning(init, axes)


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
  """Everything a transformer block needs to know (hashable: a flax attribute)."""
  hidden: int
  heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  pre_ln: bool = True            # pre-LN (ViT/GPT-2); False = post-LN (BERT)
  layer_norm_eps: float = 1e-6
  activation: str = 'gelu'        # ACTIVATIONS; BERT uses the exact (erf) GELU
  attention: str = 'einsum'       # ATTENTION
  dropout_bits: int = 32          # m5_jax/dropout.py: 32 (flax's) | 16
  dtype: str = 'float32'          # compute dtype of the matmuls
  remat: bool = False
  scan_layers: bool = False
  causal: bool = False            # a token attends to itself and earlier ones (CLIP's text)

  @property
  def head_dim(self) -> int:
    if self.hidden % self.heads:
      raise ValueError(f'hidden {self.hidden} is not divisible by heads {self.heads}')
    return self.hidden // self.heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def layer_norm(spec: TransformerSpec, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=spec.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
                      scale_init=partitioned(nn.initializers.ones, (EMBED,)),
                      bias_init=partitioned(nn.initializers.zeros, (EMBED,)), name=name)


def safe_masked_softmax(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Softmax over the last axis in fp32; rows with no allowed key become all-zero."""
  logits = logits.astype(jnp.float32)
  if mask is None:
    return jax.nn.softmax(logits, axis=-1)
  mask = jnp.broadcast_to(mask, logits.shape)
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.where(mask.any(axis=-1, keepdims=True), weights, 0.0)


class Projection(nn.Module):
  """x [..., *in] -> [..., *out] with an fp32 kernel [*in, *out] named by logical axes.

  Own module rather than nn.DenseGeneral: DenseGeneral initialises a flat 2-D
  kernel and reshapes it, which breaks 3-D logical partitioning under
  jax.set_mesh (flax#3676).
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  bias_axes: tuple[str | None, ...]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', partitioned(dense_init(), self.kernel_axes),
                        (*self.in_shape, *self.out_shape), jnp.float32)
    bias = self.param('bias', partitioned(nn.initializers.zeros, self.bias_axes),
                      self.out_shape, jnp.float32)
    n_in = len(self.in_shape)
    contract = tuple(range(x.ndim - n_in, x.ndim))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            ((contract, tuple(range(n_in))), ((), ())))
    return y + bias.astype(self.dtype)


class Attention(nn.Module):
  """Multi-head attention; self-attention when `kv` is None, else cross-attention."""
  spec: TransformerSpec

  @nn.compact
  def __call__(self, x, mask=None, kv=None, *, deterministic: bool = True):
    s = self.spec
    kv = x if kv is None else kv
    proj = lambda name: Projection(  # noqa: E731
        (s.hidden,), (s.heads, s.head_dim), (EMBED, HEADS, KV), (HEADS, KV), s.compute_dtype,
        name=name)
    q = proj('query')(x)
    k = proj('key')(kv)
    v = proj('value')(kv)
    if s.attention == 'dot_product':
      if s.attention_dropout and not deterministic:
        raise ValueError("model.attention='dot_product' has no attention dropout; set "
                         "model.attention_dropout=0 or model.attention='einsum'")
      out = jax.nn.dot_product_attention(q, k, v, mask=mask)
      if mask is not None:  # a row with no allowed key: zeros, as safe_masked_softmax gives
        allowed = jnp.broadcast_to(mask, mask.shape[:2] + (q.shape[1], k.shape[1])).any(-1)
        out = jnp.where(jnp.swapaxes(allowed, 1, 2)[..., None], out, 0).astype(out.dtype)
    else:
      q = q / jnp.sqrt(s.head_dim).astype(q.dtype)
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
      weights = safe_masked_softmax(logits, mask)
      weights = dropout(s.attention_dropout, s.dropout_bits)(weights, deterministic=deterministic)
      out = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(s.compute_dtype), v)
    out = Projection((s.heads, s.head_dim), (s.hidden,), (HEADS, KV, EMBED), (EMBED,),
                     s.compute_dtype, name='out')(out)
    return nn.with_logical_constraint(out, ACTIVATION_AXES)


class Mlp(nn.Module):
  spec: TransformerSpec

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    s = self.spec
    h = nn.Dense(s.mlp_dim, dtype=s.compute_dtype, param_dtype=jnp.float32,
                 kernel_init=partitioned(dense_init(), (EMBED, MLP)),
                 bias_init=partitioned(nn.initializers.zeros, (MLP,)), name='wi')(x)
    h = nn.with_logical_constraint(h, (BATCH, LENGTH, MLP))
    h = activation(s.activation)(h)
    h = dropout(s.dropout, s.dropout_bits)(h, deterministic=deterministic)
    out = nn.Dense(s.hidden, dtype=s.compute_dtype, param_dtype=jnp.float32,
                   kernel_init=partitioned(dense_init(), (MLP, EMBED)),
                   bias_init=partitioned(nn.initializers.zeros, (EMBED,)), name='wo')(h)
    return nn.with_logical_constraint(out, ACTIVATION_AXES)


class Block(nn.Module):
  """Self-attention (+ optional cross-attention) + MLP, pre- or post-LN.

  With `cross=True` the order is cross-attention, self-attention, MLP (LXMERT's
  cross-modality layer); `context`/`context_mask` are the other streams' tokens.
  """
  spec: TransformerSpec
  cross: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask, context=None, context_mask=None):
    s, deterministic = self.spec, self.deterministic
    drop = lambda y: dropout(s.dropout, s.dropout_bits)(y, deterministic=deterministic)  # noqa: E731

    def sublayer(x, fn, name):
      if s.pre_ln:
        return x + drop(fn(layer_norm(s, f'{name}_ln')(x)))
      return layer_norm(s, f'{name}_ln')(x + drop(fn(x)))

    if self.cross:
      cross_mask = context_mask[:, None, None, :]
      x = sublayer(x, lambda y: Attention(s, name='cross_attention')(
          y, cross_mask, kv=context, deterministic=deterministic), 'cross')
    self_mask = mask[:, None, None, :]
    if s.causal:
      self_mask = self_mask & jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
    x = sublayer(x, lambda y: Attention(s, name='attention')(
        y, self_mask, deterministic=deterministic), 'attention')
    x = sublayer(x, lambda y: Mlp(s, name='mlp')(y, deterministic=deterministic), 'mlp')
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


class _ScanBlock(nn.Module):
  """`Block` with the (carry, _) -> (carry, None) signature nn.scan wants."""
  spec: TransformerSpec
  deterministic: bool

  @nn.compact
  def __call__(self, x, mask):
    return Block(self.spec, deterministic=self.deterministic, name='block')(x, mask), None


class Encoder(nn.Module):
  """`num_layers` self-attention blocks over [B, L, D] with a key mask [B, L].

  `spec.scan_layers` stacks the layers with nn.scan (params get a leading
  'layers' axis; compile time stops growing with depth); `spec.remat`
  rematerialises each block in the backward pass. Pre-LN stacks end with a
  final layer norm.
  """
  spec: TransformerSpec
  num_layers: int

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool = True):
    s = self.spec
    if self.num_layers == 0:
      return x
    if s.scan_layers:
      block = _ScanBlock
      if s.remat:
        block = nn.remat(block, prevent_cse=False)
      stack = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                      in_axes=nn.broadcast, length=self.num_layers,
                      metadata_params={nn.PARTITION_NAME: LAYERS})
      x, _ = stack(s, deterministic, name='layers')(x, mask)
    else:
      block = nn.remat(Block) if s.remat else Block
      for i in range(self.num_layers):
        x = block(s, deterministic=deterministic, name=f'layer_{i}')(x, mask)
    if s.pre_ln:
      x = layer_norm(s, 'final_ln')(x)
    return x


def make_spec(model_cfg, **overrides) -> TransformerSpec:
  """TransformerSpec from config.model (fields of the same names).

  The older boolean `model.gelu_approximate=True` (saved configs, the public
  checkpoints' checks) still means activation 'gelu_tanh'.
  """
  fields = {f.name for f in dataclasses.fields(TransformerSpec)}
  values = {k: model_cfg[k] for k in fields if k in model_cfg}
  if model_cfg.get('gelu_approximate') and values.get('activation', 'gelu') == 'gelu':
    values['activation'] = 'gelu_tanh'
  activation(values.get('activation', 'gelu'))  # a clear error for an unknown name
  if values.get('attention', 'einsum') not in ATTENTION:
    raise ValueError(f"unknown model.attention {values['attention']!r}; expected one of "
                     f"{', '.join(ATTENTION)}")
  values.update(overrides)
  return TransformerSpec(**values)

