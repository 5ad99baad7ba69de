"""The method presets: each paper method is a setting of the one model family.

`get(method, size, modalities)` returns a ConfigDict with the three fields a
method decides: `modalities` (names), `model` and `loss`. Configs in configs/
call it and add input/optimizer/etc.; `full_config` also fills
`modality.<m>` from the plugins' defaults (tests, param counting).

| method        | fusion        | encoders | losses                                   |
| ------------- | ------------- | -------- | ---------------------------------------- |
| text_only     | none          | text     | MLM (BERT-style: post-LN, exact GELU)    |
| image_only    | none          | image    | masked region modeling                   |
| clip          | none          | 2 towers | contrastive only                         |
| single_stream | single_stream | depth 0  | masked modeling + image-text matching    |
| dual_stream   | co_attention  | per mod. | masked modeling + image-text matching    |
| capture       | co_attention  | per mod. | masked modeling + contrastive            |
| m5_mmt        | joint         | per mod. | masked modeling + contrastive, all pairs |
|               |               |          | + in-modality instance terms (ours)      |
| scale         | joint         | per mod. | m5_mmt + self-harmonised weighting       |
"""
from __future__ import annotations

import ml_collections

from m5_jax.models import sizes

ALL_FIVE = ('image', 'text', 'table', 'video', 'audio')


def parse_modalities(spec) -> tuple[str, ...]:
  """'itpva' (one-letter codes: the plugins' `code`) or a sequence of names -> tuple of names."""
  if isinstance(spec, str):
    from m5_jax import modalities as modality_plugins  # pylint: disable=g-import-not-at-top
    letters = modality_plugins.codes()
    unknown = [c for c in spec if c not in letters]
    if unknown:
      raise ValueError(f'unknown modality letter(s) {unknown} in {spec!r}; known: '
                       + ', '.join(f'{k}={v}' for k, v in letters.items()))
    return tuple(letters[c] for c in spec)
  return tuple(spec)


def model_defaults(size: str = 'tiny') -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.method = 'm5_mmt'
  m.size = size
  m.update(sizes.get(size))
  m.fusion = 'joint'              # joint | single_stream | co_attention | none
  m.vocab_size = 8000             # shared by text and table
  m.cls_token = 'first'           # first: the plugin's token 0 | learned: prepend one
  m.pool = 'mean'                 # pooled vectors: mean of the valid tokens | token ([CLS])
                                  # | last (the last valid token: CLIP's end token)
  m.projection_dim = 0            # > 0: a bias-free Dense per tower maps its pooled vector
                                  # into one space of this size (CLIP's projections)
  m.shared_encoders = ''          # 'table=text': the table tower runs the text tower's
                                  # encoder (one set of weights) instead of its own
  m.dropout = 0.1
  m.attention_dropout = 0.0
  m.pre_ln = True
  m.layer_norm_eps = 1e-6
  m.gelu_approximate = False
  m.dtype = 'float32'             # compute dtype of matmuls; params stay fp32
  m.remat = False
  m.scan_layers = False
  m.modality_dropout = 0.0        # train only; never drops an item's last modality
  return m


def loss_defaults() -> ml_collections.ConfigDict:
  l = ml_collections.ConfigDict()
  l.masked_weight = 1.0           # every masked-modeling term (masked_<m>)
  l.contrastive_weight = 1.0      # every pair term (contrastive_<a>_<b>)
  l.itm_weight = 0.0              # image-text matching (single/dual stream)
  l.instance_weight = 0.0         # in-modality instance terms (instance_<m>, objectives.py)
  l.instance_hard_negatives = 0.0 # beta: instance terms weigh negatives by exp(beta * logit)
  l.instance_view = 'clean'       # instance terms' second view: clean | complement | auto (objectives.py)
  l.weights = ml_collections.ConfigDict()  # per-term overrides, e.g. weights.masked_text
  l.contrastive = 'softmax'       # softmax (InfoNCE) | sigmoid (SigLIP)
  l.contrastive_on = 'encoder'    # encoder ([CLS] before fusion) | fusion (pooled)
  l.temperature_init = 0.07       # learnable: log(1/t) is the parameter
  l.max_log_scale = 4.6052        # log(100), CLIP's clamp
  l.sigmoid_bias_init = -10.0     # SigLIP
  l.scale_weighting = False       # SCALE's self-harmonised per-sample weights
  return l


def get(method: str, size: str = 'tiny', modalities=None) -> ml_collections.ConfigDict:
  """{'modalities', 'model', 'loss'} for `method`; `modalities` overrides its default set."""
  if method not in PRESETS:
    raise ValueError(f'unknown method {method!r}; expected one of {", ".join(PRESETS)}')
  default_modalities, model_updates, loss_updates = PRESETS[method](size)
  model, loss = model_defaults(size), loss_defaults()
  model.method = method
  model.update(model_updates)
  loss.update(loss_updates)
  names = parse_modalities(modalities) if modalities is not None else default_modalities
  if model.fusion == 'single_stream':
    # One transformer as deep as encoder + fusion together (BERT-base depth for base).
    model.fusion_layers = model.encoder_layers + model.fusion_layers
    model.encoder_layers = 0
  return ml_collections.ConfigDict({'modalities': names, 'model': model, 'loss': loss})


def full_config(method: str, size: str = 'tiny', modalities=None) -> ml_collections.ConfigDict:
  """get() plus `modality.<m>` = each plugin's default_config() and a seed."""
  from m5_jax import modalities as modality_plugins  # pylint: disable=g-import-not-at-top
  config = get(method, size, modalities)
  config.seed = 0
  config.modality = ml_collections.ConfigDict(
      {m: modality_plugins.get(m).default_config() for m in config.modalities})
  return config


_BERT_STYLE = dict(pre_ln=False, layer_norm_eps=1e-12, gelu_approximate=False)
_NO_MASKING = dict(masked_weight=0.0)
_NO_CONTRASTIVE = dict(contrastive_weight=0.0)


def _text_only(size):
  return ('text',), dict(fusion='none', **_BERT_STYLE), dict(_NO_CONTRASTIVE)


def _image_only(size):
  return ('image',), dict(fusion='none'), dict(_NO_CONTRASTIVE)


def _clip(size):
  return ('image', 'text'), dict(fusion='none'), dict(**_NO_MASKING)


def _single_stream(size):
  return (('image', 'text'), dict(fusion='single_stream', **_BERT_STYLE),
          dict(itm_weight=1.0, **_NO_CONTRASTIVE))


def _dual_stream(size):
  return (('image', 'text'), dict(fusion='co_attention', **_BERT_STYLE),
          dict(itm_weight=1.0, **_NO_CONTRASTIVE))


def _capture(size):
  return ('image', 'text'), dict(fusion='co_attention', **_BERT_STYLE), dict()


# m5_jax's recipe for the M5-MMT family (not in the paper): the in-modality instance
# terms keep what tells products apart inside a modality; without them pretrained
# features lost to random weights on fine-grained retrieval (benchmarks/results/learning.md).
_INSTANCE = dict(instance_weight=1.0, instance_view='auto')


def _m5_mmt(size):
  return ALL_FIVE, dict(fusion='joint'), dict(_INSTANCE)


def _scale(size):
  return ALL_FIVE, dict(fusion='joint'), dict(scale_weighting=True, **_INSTANCE)


PRESETS = {
    'text_only': _text_only,
    'image_only': _image_only,
    'clip': _clip,
    'single_stream': _single_stream,
    'dual_stream': _dual_stream,
    'capture': _capture,
    'm5_mmt': _m5_mmt,
    'scale': _scale,
}
