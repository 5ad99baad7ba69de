"""BERT (`hf_bert`: config.json + model.safetensors | pytorch_model.bin, vocab.txt)
into the text tower and, by `towers`, the table tower: its own copy of the encoder,
or the text tower's with model.shared_encoders='table=text' (the word embeddings
are shared by text and table in m5_jax anyway).

How m5_jax's text tower differs from BERT, and what the loader does about it:
  * vocabulary order: m5_jax fixes [PAD] [UNK] BOS EOS [MASK] at ids 0..4
    (m5_jax/modalities/text.py); BERT's vocab.txt has them at 0, 100..103. The
    loader permutes the vocabulary (`wordpiece.project_vocab_order`): [PAD] [UNK]
    [CLS] [SEP] [MASK] first, every other piece after them in vocab.txt order; the
    word embedding rows and the MLM output bias follow it. `WordPieceTokenizer`
    tokenises with the same order, so ids and rows agree. BOS is BERT's [CLS].
  * token types: m5_jax's text has none; BERT adds token_type_embeddings[0] to
    every token, so that row is folded into the position table (exact). The
    table tower's key/value type embeddings take BERT's segment rows 0 and 1
    (keys are segment A, values segment B; row 0 twice if the checkpoint has one).
  * positions: the first `modality.<m>.max_len` rows of BERT's 512.
  * no pooler: m5_jax pools by mean / first token, so `pooler.*` is skipped,
    as are the NSP head and the MLM decoder weight (tied to the word embeddings).
  * m5_jax's text does not append [SEP]; BERT's fine-tuning inputs end with it.
The model must be BERT-style (`model.pre_ln=False`, `layer_norm_eps=1e-12`,
exact GELU: the text_only, single_stream, dual_stream and capture presets);
anything else is a one-line error naming the config key. For single_stream the
layers go into the one fusion transformer (VisualBERT, UNITER).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping

import numpy as np

from m5_jax.models import family
from m5_jax.models.public_checkpoints.common import (Targets, check_architecture, layer_rows,
                                                     module_rows, transformer_fields)
from m5_jax.models.public_checkpoints.wordpiece import project_vocab_order, read_vocab

# Per encoder layer and per tower (text or table: the embedding LayerNorm and the MLM
# head transform), BERT's modules under encoder.layer.{i}. and m5_jax's.
BERT_ATTENTION = ('attention.self.query', 'attention.self.key', 'attention.self.value',
                  'attention.output.dense')
BERT_MLP = ('intermediate.dense', 'output.dense')
BERT_LAYER = layer_rows(BERT_ATTENTION, BERT_MLP,
                        norms=('attention.output.LayerNorm', 'output.LayerNorm'))
BERT_TOWER = module_rows(
    dense=[('cls.predictions.transform.dense', 'heads_{m}/transform')],
    norms=[('embeddings.LayerNorm', 'embedders_{m}/finish/norm'),
           ('cls.predictions.transform.LayerNorm', 'heads_{m}/norm')])
BERT_SKIPPED = (
    (r'^pooler\.', 'BERT pooler: m5_jax pools by mean / first token without a dense layer'),
    (r'^cls\.seq_relationship\.', 'next-sentence head: not an m5_jax objective'),
    (r'^cls\.predictions\.decoder\.weight$', 'tied to the word embeddings'),
    (r'^cls\.predictions\.decoder\.bias$', 'the same tensor as cls.predictions.bias'),
    (r'position_ids$', 'a buffer (0..511), not a parameter'),
)


def bert_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """BertModel / BertForPreTraining names without the 'bert.' prefix; TF-era gamma/beta renamed."""
  out = {}
  for name, value in tensors.items():
    name = re.sub(r'^bert\.', '', name)
    name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', re.sub(r'LayerNorm\.beta$',
                                                                   'LayerNorm.bias', name))
    out[name] = value
  return out


def bert_targets(tensors: Mapping[str, np.ndarray], hf_config, config, path: str,
                 towers: tuple[str, ...]) -> tuple[dict[str, tuple[str, Callable]], dict[str, str]]:
  """{m5_jax path: (source description, shape -> array)} and {source: why skipped}."""
  check_architecture('bert', hf_config, config, transformer_fields(hf_config, pre_ln=False))
  if hf_config.get('position_embedding_type', 'absolute') != 'absolute':
    raise ValueError('the BERT checkpoint uses position_embedding_type='
                     f"{hf_config['position_embedding_type']!r}; m5_jax has absolute positions")
  order = project_vocab_order(read_vocab(path))
  if len(order) != hf_config['vocab_size']:
    raise ValueError(f"vocab.txt has {len(order)} pieces but config.json vocab_size="
                     f"{hf_config['vocab_size']}")
  if config.model.vocab_size != len(order):
    raise ValueError(f'the BERT checkpoint needs vocab_size={len(order)} (config argument '
                     f'...:vocab_size={len(order)}; got model.vocab_size='
                     f'{config.model.vocab_size})')
  t = Targets('BERT', tensors, path)
  t.add('word_embed/embedding', ['embeddings.word_embeddings.weight'],
        lambda w, shape: w[order].reshape(shape))
  positions = 'embeddings.position_embeddings.weight'
  types = 'embeddings.token_type_embeddings.weight'
  for m in towers:
    length = config.modality[m].max_len
    if length > hf_config['max_position_embeddings']:
      raise ValueError(f"modality.{m}.max_len={length} is longer than the BERT checkpoint's "
                       f"max_position_embeddings={hf_config['max_position_embeddings']}")
    if m == 'text':  # one segment: token type 0 folded into the positions (exact)
      t.add('embedders_text/finish/positions', [positions, types],
            lambda p, tt, shape, n=length: (p[:n] + tt[0]).reshape(shape))
    else:  # table: keys are segment A, values segment B
      t.add(f'embedders_{m}/finish/positions', [positions],
            lambda p, shape, n=length: p[:n].reshape(shape))
      t.add(f'embedders_{m}/key_value_types', [types],
            lambda tt, shape: tt[[0, min(1, len(tt) - 1)]].reshape(shape))
    for name, target, fn in BERT_TOWER:
      if name.startswith('cls.') and name not in tensors:
        continue  # a BertModel checkpoint has no MLM head: the head stays new
      t.add(target.format(m=m), [name], fn)
    if 'cls.predictions.bias' in tensors:
      t.add(f'heads_{m}/bias', ['cls.predictions.bias'], lambda b, shape: b[order].reshape(shape))
  # Single stream (VisualBERT, UNITER): BERT's layers are the one fusion transformer
  # that sees every modality; otherwise each tower's encoder gets its own copy, or
  # the one it shares (model.shared_encoders='table=text').
  owners = family.encoder_owners(config)
  stacks = (['fusion/transformer'] if config.model.fusion == 'single_stream'
            else sorted({f'encoders_{owners.get(m, m)}/transformer' for m in towers}))
  for stack in stacks:
    t.add_layers(stack, hf_config['num_hidden_layers'], BERT_LAYER)
  return t.result(BERT_SKIPPED)


def bert_model_config(path: str) -> dict[str, Any]:
  """The m5_jax config fields a BERT folder fixes (for configs/bert_init.py)."""
  with open(os.path.join(os.path.expanduser(path), 'config.json')) as f:
    c = json.load(f)
  return dict(hidden=c['hidden_size'], heads=c['num_attention_heads'],
              mlp_dim=c['intermediate_size'], layers=c['num_hidden_layers'],
              vocab_size=c['vocab_size'], layer_norm_eps=c.get('layer_norm_eps', 1e-12),
              max_positions=c['max_position_embeddings'])
