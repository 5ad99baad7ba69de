"""Classification fine-tuning: the pretrained model plus DESIGN.md section 3's head.

  logits = Dense(classes)(Dropout(GELU(Dense(1024)(concat_m pooled[m]))))

`pooled[m]` is the model's per-modality vector (zeros for an absent modality, so
the concatenation has a fixed width). The backbone's parameters live under
'backbone' (the pretraining params tree, unchanged), the head's under 'head', so
`train.py` initialises the backbone from a pretraining checkpoint with
`config.init_from.into = 'backbone'`. The eval binaries score a fine-tuned
checkpoint with `build(config)` + `predict`.

Config: config.task = 'classification_finetune'; config.finetune.num_classes,
.hidden (1024), .dropout (0.1).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from m5_jax import models
from m5_jax.models import layers

TERM = 'classification'


class Classifier(nn.Module):
  config: ml_collections.FrozenConfigDict

  def setup(self):
    self.backbone = models.build(self.config)
    cfg = self.config.finetune
    self.hidden = nn.Dense(cfg.hidden, kernel_init=layers.partitioned(
        layers.dense_init(), (layers.EMBED, layers.MLP)), name='head_hidden')
    self.dropout = nn.Dropout(cfg.dropout)
    self.out = nn.Dense(cfg.num_classes, kernel_init=layers.partitioned(
        layers.dense_init(), (layers.MLP, None)), name='head_out')

  def __call__(self, batch, train: bool = False):
    outputs = self.backbone(batch, train=train, heads=False)
    features = jnp.concatenate([outputs['pooled'][m] for m in self.config.modalities], axis=-1)
    h = nn.gelu(self.hidden(features))
    h = self.dropout(h, deterministic=not train)
    return self.out(h).astype(jnp.float32)


def build(config: ml_collections.ConfigDict) -> Classifier:
  if not isinstance(config, ml_collections.FrozenConfigDict):
    config = ml_collections.FrozenConfigDict(config)
  return Classifier(config)


def terms(logits: jax.Array, batch) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{'classification': (sum of cross-entropy, count)} over labelled, real examples."""
  labels = batch['label']
  valid = batch['example_mask'].astype(bool) & (labels >= 0)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(labels, 0)[:, None], -1)[:, 0]
  return {TERM: (jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(valid).astype(jnp.float32))}


def accuracy(logits: jax.Array, batch) -> tuple[jax.Array, jax.Array]:
  """(number correct, number counted) over labelled, real examples."""
  labels = batch['label']
  valid = batch['example_mask'].astype(bool) & (labels >= 0)
  correct = (jnp.argmax(logits, -1) == labels) & valid
  return jnp.sum(correct).astype(jnp.float32), jnp.sum(valid).astype(jnp.float32)
