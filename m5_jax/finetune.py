"""Classification fine-tuning: the pretrained model plus the M5Product paper's head.

  logits = Dense(classes)(Dropout(GELU(Dense(1024)(concat_m pooled[m]))))

(The design notes' section 3, ../shared/DESIGN.md beside the repository, not in it.)
`pooled[m]` is the model's per-modality vector (zeros for an absent modality, so
the concatenation has a fixed width). The backbone's parameters live under
'backbone' (the pretraining params tree, unchanged), the head's under 'head_hidden'
and 'head_out', so `train.py` initialises the backbone from a pretraining
checkpoint with `config.init_from.into = 'backbone'`. `m5_jax.evaluate.
classification` scores a fine-tuned checkpoint with `build(config)`'s logits.

The head's class index is the label value itself: the device batch's int32 label
(m5_jax/batch.py), -1 where the int64 label does not fit in int32. Labels must
therefore be class indices in [0, num_classes); a label outside that range is not
trained on (`terms`), and the eval binary counts such test labels
(`test_labels_outside_head`). 12-digit or hashed labels (data_prep/m5product/
README.md) need a dense remap in the input pipeline first, which does not exist yet.

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
  """{'classification': (sum of cross-entropy, count)} over real examples whose label
  is a class of the head (0 <= label < num_classes)."""
  labels = batch['label']
  valid = batch['example_mask'].astype(bool) & (labels >= 0) & (labels < logits.shape[-1])
  classes = jnp.clip(labels, 0, logits.shape[-1] - 1)[:, None]
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), classes, -1)[:, 0]
  return {TERM: (jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(valid).astype(jnp.float32))}

