"""M5-MMT in PyTorch: the side-by-side peer of m5_jax's model for benchmarks/peer_torch.py.

Written from the paper and the official code's structure (BERT-style layers per
modality, a joint fusion transformer, UNITER-style masked heads) at m5_jax's
dimensions and with m5_jax's choices wherever they differ from BERT, so that
parameters and FLOPs match (the benchmark checks both within 3%):

  embedders   text/table: shared word embeddings (+ table key/value types) +
              learned positions, LayerNorm; image regions: LN(W r) + LN(W box),
              a learned [CLS], LayerNorm; video S3D rows and audio time patches
              (80 bins x 16 frames): a projection, [CLS], positions, LayerNorm
  encoders    per modality, pre-LN blocks (m5_jax's default) and a final LN
  fusion      modality-type embeddings, all tokens concatenated, pre-LN blocks
  heads       MLM with logits tied to the word embeddings (text, table); masked
              feature regression Dense-GELU-LN-Dense (image, video, audio); with
              `head_rows` only at the masked positions, gathered first (as
              UNITER's code does; m5_jax's model.heads_at='masked', same bound)
  losses      masked modeling, InfoNCE over every pair of mean-pooled encoder
              vectors, and the m5_mmt preset's instance terms (the masked view
              against a second, clean pass of the embedders and encoders)

Masking follows m5_jax's plugins (BERT 80/10/10 for text, whole spans for the
table, zeroed features) and runs outside the timed model call's graph in the
same step. The step is AdamW with global-norm clipping at 1.0, as in
configs/common.py.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

MASK_ID, FIRST_ORDINARY_ID, BOS_ID, PAD_ID = 4, 5, 2, 0
BERT_LN_EPS = 1e-12        # embedders and heads (m5_jax/modalities/base.py)
ACTIVATIONS = {'gelu': lambda x: F.gelu(x), 'gelu_tanh': lambda x: F.gelu(x, approximate='tanh')}


class Block(nn.Module):
  """Pre-LN self-attention + MLP; query rows with no allowed key give zeros."""

  def __init__(self, hidden, heads, mlp_dim, dropout, eps, activation):
    super().__init__()
    self.heads = heads
    self.ln1, self.ln2 = nn.LayerNorm(hidden, eps=eps), nn.LayerNorm(hidden, eps=eps)
    self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
    self.wi, self.wo = nn.Linear(hidden, mlp_dim), nn.Linear(mlp_dim, hidden)
    self.drop = nn.Dropout(dropout)
    self.act = ACTIVATIONS[activation]

  def attention(self, x, mask):
    b, length, d = x.shape
    split = lambda t: t.view(b, length, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
    bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(
        ~mask, torch.finfo(x.dtype).min)[:, None, None, :]
    out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                         attn_mask=bias)
    out = out.transpose(1, 2).reshape(b, length, d) * mask.any(-1)[:, None, None]
    return self.o(out)

  def forward(self, x, mask):
    x = x + self.drop(self.attention(self.ln1(x), mask))
    return x + self.drop(self.wo(self.drop(self.act(self.wi(self.ln2(x))))))


class Encoder(nn.Module):
  def __init__(self, layers, hidden, heads, mlp_dim, dropout, eps, activation):
    super().__init__()
    self.blocks = nn.ModuleList(Block(hidden, heads, mlp_dim, dropout, eps, activation)
                                for _ in range(layers))
    self.final_ln = nn.LayerNorm(hidden, eps=eps)

  def forward(self, x, mask):
    for block in self.blocks:
      x = block(x, mask)
    return self.final_ln(x)


class Finish(nn.Module):
  """m5_jax's FinishTokens: optional [CLS], optional positions, LayerNorm, dropout."""

  def __init__(self, hidden, length, add_cls, add_positions, dropout):
    super().__init__()
    self.cls = nn.Parameter(0.02 * torch.randn(hidden)) if add_cls else None
    self.positions = nn.Parameter(0.02 * torch.randn(length, hidden)) if add_positions else None
    self.norm = nn.LayerNorm(hidden, eps=BERT_LN_EPS)
    self.drop = nn.Dropout(dropout)

  def forward(self, tokens, mask, present):
    if self.cls is not None:
      b = tokens.shape[0]
      tokens = torch.cat([self.cls.expand(b, 1, -1), tokens], 1)
      mask = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
    if self.positions is not None:
      tokens = tokens + self.positions
    return self.drop(self.norm(tokens)), mask & present[:, None]


def time_patches(mel, frame_mask, patch_frames):
  """[B, bins, frames] -> ([B, patches, patch_frames*bins], patch mask) (audio.py)."""
  b, bins, frames = mel.shape
  n = -(-frames // patch_frames)
  mel = torch.where(frame_mask[:, None, :], mel, torch.zeros_like(mel))
  x = F.pad(mel, (0, n * patch_frames - frames)).transpose(1, 2).reshape(b, n, -1)
  m = F.pad(frame_mask, (0, n * patch_frames - frames)).reshape(b, n, patch_frames).any(-1)
  return x, m


class Embedders(nn.Module):
  """The five features-form embedders; word embeddings shared by text and table."""

  def __init__(self, config, word_embed):
    super().__init__()
    d, drop, mod = config.model.hidden, config.model.dropout, config.modality
    self.word_embed, self.mod = word_embed, mod
    self.table_types = nn.Parameter(0.02 * torch.randn(2, d))
    self.region, self.box = nn.Linear(mod.image.region_dim, d), nn.Linear(mod.image.box_dim, d)
    self.region_norm = nn.LayerNorm(d, eps=BERT_LN_EPS)
    self.box_norm = nn.LayerNorm(d, eps=BERT_LN_EPS)
    self.s3d = nn.Linear(mod.video.s3d_dim, d)
    self.mel = nn.Linear(mod.audio.patch_frames * mod.audio.mel_bins, d)
    n_audio = -(-mod.audio.mel_frames // mod.audio.patch_frames)
    self.finish = nn.ModuleDict({
        'text': Finish(d, mod.text.max_len, False, True, drop),
        'table': Finish(d, mod.table.max_len, False, True, drop),
        'image': Finish(d, 0, True, False, drop),
        'video': Finish(d, 1 + mod.video.num_frames, True, True, drop),
        'audio': Finish(d, 1 + n_audio, True, True, drop)})

  def forward(self, m, x):
    if m == 'text':
      tokens, mask = self.word_embed(x['ids']), x['mask']
    elif m == 'table':
      tokens = self.word_embed(x['ids']) + self.table_types[x['is_value'].long()]
      mask = x['mask']
    elif m == 'image':
      tokens = self.region_norm(self.region(x['regions'])) + self.box_norm(self.box(x['boxes']))
      mask = x['mask']
    elif m == 'video':
      tokens, mask = self.s3d(x['s3d']), x['mask']
    else:
      patches, mask = time_patches(x['mel'], x['mask'], self.mod.audio.patch_frames)
      tokens = self.mel(patches)
    return self.finish[m](tokens, mask, x['present'])


class FeatureHead(nn.Module):
  def __init__(self, hidden, out_dim, activation):
    super().__init__()
    self.transform, self.out = nn.Linear(hidden, hidden), nn.Linear(hidden, out_dim)
    self.norm, self.act = nn.LayerNorm(hidden, eps=BERT_LN_EPS), ACTIVATIONS[activation]

  def forward(self, x):
    return self.out(self.norm(self.act(self.transform(x))))


class MlmHead(nn.Module):
  def __init__(self, hidden, word_embed, activation):
    super().__init__()
    self.transform, self.norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=BERT_LN_EPS)
    self.word_embed, self.act = word_embed, ACTIVATIONS[activation]
    self.bias = nn.Parameter(torch.zeros(word_embed.num_embeddings))

  def forward(self, x):
    return self.norm(self.act(self.transform(x))) @ self.word_embed.weight.T + self.bias


def mean_pool(x, mask, present):
  w = mask.to(x.dtype)[..., None]
  pooled = (x * w).sum(1) / w.sum(1).clamp(min=1.0)
  return torch.where(present[:, None], pooled, torch.zeros_like(pooled))


def info_nce(za, zb, valid, log_scale, max_log_scale):
  """m5_jax's softmax_contrastive over valid rows, both directions: (sum, count)."""
  unit = lambda z: z * torch.rsqrt((z * z).sum(-1, keepdim=True).clamp(min=1e-12))  # noqa: E731
  logits = torch.exp(log_scale.clamp(max=max_log_scale)) * unit(za) @ unit(zb).T
  pair = valid[:, None] & valid[None, :]
  diag = torch.eye(len(valid), dtype=torch.bool, device=za.device)
  neg = torch.finfo(logits.dtype).min

  def direction(lg):
    return -torch.log_softmax(lg.masked_fill(~pair, neg), -1)[diag]

  per_row = 0.5 * (direction(logits) + direction(logits.T))
  return torch.where(valid, per_row, torch.zeros_like(per_row)).sum(), valid.sum().float()


class M5Peer(nn.Module):
  """The whole M5-MMT train forward: batch (masked, clean, targets) -> scalar loss.

  `head_rows` {modality: K}: apply that modality's head only at K gathered
  positions per item (the masked ones first), as m5_jax's model.heads_at='masked'.
  """

  def __init__(self, config, head_rows=None):
    super().__init__()
    model_config, mod = config.model, config.modality
    self.names, self.config, self.head_rows = tuple(config.modalities), config, head_rows or {}
    d = model_config.hidden
    act = model_config.get('activation', 'gelu')
    self.word_embed = nn.Embedding(model_config.vocab_size, d)
    self.embedders = Embedders(config, self.word_embed)
    layers = lambda n: Encoder(n, d, model_config.heads, model_config.mlp_dim,  # noqa: E731
                               model_config.dropout, model_config.layer_norm_eps, act)
    self.encoders = nn.ModuleDict({m: layers(model_config.encoder_layers) for m in self.names})
    self.type_embedding = nn.Parameter(0.02 * torch.randn(len(self.names), d))
    self.fusion = layers(model_config.fusion_layers)
    n_audio = mod.audio.patch_frames * mod.audio.mel_bins
    out_dims = {'image': mod.image.region_dim, 'video': mod.video.s3d_dim, 'audio': n_audio}
    self.heads = nn.ModuleDict({m: MlmHead(d, self.word_embed, act) if m in ('text', 'table')
                                else FeatureHead(d, out_dims[m], act) for m in self.names})
    self.log_scale = nn.Parameter(torch.tensor(math.log(1 / config.loss.temperature_init)))
    self.sigmoid_bias = nn.Parameter(torch.tensor(config.loss.sigmoid_bias_init))

  def encode(self, m, x):
    tokens, mask = self.embedders(m, x)
    return self.encoders[m](tokens, mask), mask

  def forward(self, masked, clean, targets):
    present = {m: masked[m]['present'] for m in self.names}
    streams = {m: self.encode(m, masked[m]) for m in self.names}
    fused = self.fusion(
        torch.cat([streams[m][0] + self.type_embedding[i] for i, m in enumerate(self.names)], 1),
        torch.cat([streams[m][1] for m in self.names], 1))
    total, start = 0.0, 0
    for m in self.names:
      tokens, mask = fused[:, start:start + streams[m][0].shape[1]], streams[m][1]
      start += tokens.shape[1]
      t = dict(targets[m], weights=targets[m]['weights'] * mask.float())
      if m in self.head_rows:  # gather the masked positions first
        idx = torch.topk(t['weights'], self.head_rows[m], dim=1).indices
        tokens = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
        t = {k: torch.gather(v, 1, idx if v.dim() == 2 else
                             idx[..., None].expand(-1, -1, v.shape[-1])) for k, v in t.items()}
      pred, w = self.heads[m](tokens), t['weights']
      if m in ('text', 'table'):
        per = F.cross_entropy(pred.flatten(0, 1), t['ids'].flatten().long(), reduction='none')
        per = per.view_as(w)
      else:
        per = (pred - t['features']).square().mean(-1)
      total = total + (per * w).sum() / w.sum().clamp(min=1.0)
    vectors = {m: mean_pool(*streams[m], present[m]) for m in self.names}
    max_ls = self.config.loss.max_log_scale
    for a, b in itertools.combinations(self.names, 2):
      num, den = info_nce(vectors[a], vectors[b], present[a] & present[b], self.log_scale, max_ls)
      total = total + num / den.clamp(min=1.0)
    if self.config.loss.instance_weight > 0:
      for m in self.names:
        clean_vector = mean_pool(*self.encode(m, clean[m]), present[m])
        num, den = info_nce(vectors[m], clean_vector, present[m], self.log_scale, max_ls)
        total = total + self.config.loss.instance_weight * num / den.clamp(min=1.0)
    return total


# --------------------------------------------------------------------- masking
def num_to_mask(num_valid, prob):
  count = torch.floor(prob * num_valid.float() + 0.5).long().clamp(min=1)
  return torch.where(num_valid > 0, count, torch.zeros_like(count))


def select_random(valid, prob, gen):
  scores = torch.rand(valid.shape, generator=gen).masked_fill(~valid, 2.0)
  ranks = scores.argsort(-1).argsort(-1)
  return valid & (ranks < num_to_mask(valid.sum(-1), prob)[:, None])


def mask_batch(batch, config, gen):
  """(masked, targets) as m5_jax's plugins make them (m5_jax/modalities/*.py)."""
  masked, targets = {}, {}
  for m in config.modalities:
    x, cfg = batch[m], config.modality[m]
    present = x['present']
    if m == 'text':
      cand = x['mask'] & present[:, None] & (x['ids'] != BOS_ID) & (x['ids'] != PAD_ID)
      sel = select_random(cand, cfg.mask_prob, gen)
      u = torch.rand(sel.shape, generator=gen)
      rand_ids = torch.randint(FIRST_ORDINARY_ID, cfg.vocab_size, sel.shape, generator=gen)
      corrupt = torch.where(u < cfg.mask_token_prob, MASK_ID,
                            torch.where(u < cfg.mask_token_prob + cfg.random_token_prob,
                                        rand_ids, x['ids']))
      masked[m] = dict(x, ids=torch.where(sel, corrupt, x['ids']))
      targets[m] = {'ids': x['ids'], 'weights': sel.float()}
    elif m == 'table':
      real = x['mask'] & present[:, None] & (x['span'] > 0)
      num_spans = torch.where(real, x['span'], 0).amax(-1)
      slots = torch.arange(1, cfg.max_len + 1)[None]
      chosen = F.pad(select_random(slots <= num_spans[:, None], cfg.mask_prob, gen), (1, 0))
      sel = real & torch.gather(chosen, 1, x['span'].long())
      masked[m] = dict(x, ids=torch.where(sel, MASK_ID, x['ids']))
      targets[m] = {'ids': x['ids'], 'weights': sel.float()}
    else:
      key = {'image': 'regions', 'video': 's3d', 'audio': 'mel'}[m]
      if m == 'audio':
        feats, valid = time_patches(x['mel'], x['mask'], cfg.patch_frames)
        feats = (feats - feats.mean(-1, keepdim=True)) * torch.rsqrt(
            feats.var(-1, unbiased=False, keepdim=True) + 1e-6)
      else:
        feats, valid = x[key], x['mask']
      sel = select_random(valid & present[:, None], cfg.mask_prob, gen)
      if m == 'audio':
        frames = x['mel'].shape[2]
        frame_sel = sel.repeat_interleave(cfg.patch_frames, 1)[:, :frames]
        masked[m] = dict(x, mel=x['mel'].masked_fill(frame_sel[:, None, :], 0.0))
      else:
        masked[m] = dict(x, **{key: x[key].masked_fill(sel[..., None], 0.0)})
      pad = lambda t: F.pad(t, (0, 0, 1, 0) if t.dim() == 3 else (1, 0))  # noqa: E731  [CLS] slot
      targets[m] = {'features': pad(feats), 'weights': pad(sel.float())}
  return masked, targets


def optimizer(model, config):
  """AdamW as configs/common.py sets it (no decay on biases, norms and embeddings)."""
  opt = config.optimizer
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (no_decay if p.dim() < 2 or 'word_embed' in name else decay).append(p)
  return torch.optim.AdamW([{'params': decay, 'weight_decay': opt.weight_decay},
                            {'params': no_decay, 'weight_decay': 0.0}],
                           lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps, foreach=True)


def to_torch(batch):
  """A numpy batch (m5_jax/synthetic_input.make_batch) -> torch tensors; float16 media
  features (the batch schema's) become float32, the peer's fp32 input."""
  if isinstance(batch, dict):
    return {k: to_torch(v) for k, v in batch.items()}
  if batch.dtype == np.float16:
    return torch.from_numpy(batch.astype(np.float32))
  return torch.from_numpy(batch.copy())
