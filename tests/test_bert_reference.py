"""The text tower, configured BERT-style, equals an independent NumPy BERT (fp32, 1e-5)."""
import jax
import numpy as np
from flax import linen as nn
from scipy import special

from m5_jax import models
import model_testlib


def np_layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def np_bert(ids, mask, p, num_layers, heads, eps=1e-12):
  """BERT (Devlin et al.): embeddings + LN, then post-LN layers with erf-GELU.

  Token-type embeddings are folded into the position table (one segment), as the
  text embedder's docstring says; the attention mask is BERT's additive -10000.
  """
  emb = p['embedders_text']['finish']
  x = p['word_embed']['embedding'][ids] + emb['positions'][None, :ids.shape[1]]
  x = np_layer_norm(x, emb['norm']['scale'], emb['norm']['bias'], eps)
  b, l, d = x.shape
  hd = d // heads
  additive = (1.0 - mask[:, None, None, :].astype(np.float64)) * -10000.0
  for i in range(num_layers):
    w = p['encoders_text']['transformer'][f'layer_{i}']
    att = w['attention']

    def proj(name, x=x, att=att):
      k = att[name]['kernel'].reshape(d, d)
      return (x @ k + att[name]['bias'].reshape(d)).reshape(b, l, heads, hd).transpose(0, 2, 1, 3)

    q, k, v = proj('query'), proj('key'), proj('value')
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + additive
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, l, d)
    attn_out = ctx @ att['out']['kernel'].reshape(d, d) + att['out']['bias']
    x = np_layer_norm(x + attn_out, w['attention_ln']['scale'], w['attention_ln']['bias'], eps)
    h = x @ w['mlp']['wi']['kernel'] + w['mlp']['wi']['bias']
    h = 0.5 * h * (1.0 + special.erf(h / np.sqrt(2.0)))
    h = h @ w['mlp']['wo']['kernel'] + w['mlp']['wo']['bias']
    x = np_layer_norm(x + h, w['mlp_ln']['scale'], w['mlp_ln']['bias'], eps)
  return x


def test_text_encoder_matches_numpy_bert():
  num_layers, heads = 2, 4
  config = model_testlib.tiny_config('text_only', hidden=32, heads=heads, mlp_dim=64,
                                     encoder_layers=num_layers)
  assert not config.model.pre_ln and config.model.fusion == 'none'
  model = models.build(config)
  batch = model_testlib.random_batch(config, 3, present_prob=1.0, seed=4)
  params = nn.unbox(model_testlib.random_params(model, batch, seed=5))
  out = jax.jit(lambda p, b: model.apply({'params': p}, b, heads=False))(params, batch)

  ref = np_bert(batch['text']['ids'], batch['text']['mask'],
                jax.tree.map(lambda a: np.asarray(a, np.float64), params), num_layers, heads)
  np.testing.assert_allclose(out['tokens']['text'], ref, atol=1e-5, rtol=1e-5)
  mask = np.asarray(batch['text']['mask'], np.float64)[..., None]  # model.pool='mean'
  np.testing.assert_allclose(out['pooled']['text'], (ref * mask).sum(1) / mask.sum(1),
                             atol=1e-5, rtol=1e-5)
  assert np.abs(ref[:, 0] - ref[:, 1]).max() > 1e-2  # the comparison is not vacuous
