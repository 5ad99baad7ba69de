"""Text (the product title): BOS + sentencepiece ids, BERT masked language modeling.

Also home of `SentencePieceTokenizer`, the tf.data-side tokenizer text and table share.

Why `tf.numpy_function` over the `sentencepiece` package rather than
tensorflow-text's SentencepieceTokenizer: tensorflow-text 2.21.1 does import with
tensorflow-cpu 2.21, but its wheel is 60 MB, its metadata requires the full
`tensorflow` package (so it must be installed with --no-deps, outside
`pip install -r`), its compiled ops break on every TF minor bump, and it bundles
its own sentencepiece build, so ids could drift from the pinned package that
trains the tokenizer (today they agree: identical ids on 25,026 test strings). The cost, measured (benchmarks/results/modality_preprocess.md):
a numpy_function call per example holds the GIL, about 6x slower than the
tensorflow-text op per example (batched calls are on par). So a dataset built
with the tokenizer stores the ids (data_prep/m5product/token_ids.py) and
`preprocess` reads them (`title_ids`, `pv_ids`) with no Python at all; the
tokenizer runs here only for builds without ids or with another tokenizer (a
BERT vocabulary). Encoding never samples (no subword regularisation), so both
give the same ids.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from m5_jax.modalities import base

# Special ids every tokenizer of the project has (data_prep trains it this way).
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 2, 3, 4
FIRST_ORDINARY_ID = 5  # random replacements are drawn from [5, vocab_size)


class SentencePieceTokenizer:
  """A sentencepiece model usable inside tf.data: tokenize(tf.string[N]) -> ragged int32.

  `model` is a path (any tf.io.gfile path), the serialized model bytes, or a
  `sentencepiece.SentencePieceProcessor`. The special ids are checked on load.
  """

  def __init__(self, model: Any):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    if isinstance(model, spm.SentencePieceProcessor):
      self.processor = model
    else:
      if isinstance(model, str):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        with tf.io.gfile.GFile(model, 'rb') as f:
          model = f.read()
      self.processor = spm.SentencePieceProcessor(model_proto=model)
    expected = {'pad': PAD_ID, 'unk': UNK_ID, 'bos': BOS_ID, 'eos': EOS_ID}
    got = {'pad': self.processor.pad_id(), 'unk': self.processor.unk_id(),
           'bos': self.processor.bos_id(), 'eos': self.processor.eos_id()}
    if got != expected or self.processor.id_to_piece(MASK_ID) != '[MASK]':
      raise ValueError(f'tokenizer special ids must be {expected} and [MASK]={MASK_ID}; got {got} '
                       f'and id {MASK_ID}={self.processor.id_to_piece(MASK_ID)!r}')

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  def encode(self, strings: list[str]) -> list[list[int]]:
    return self.processor.encode(strings, out_type=int)

  def tokenize(self, strings):
    """tf.string[N] -> tf.RaggedTensor int32 [N, (tokens)] (no BOS/EOS added)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def encode_numpy(batch):
      ids = self.encode([s.decode('utf-8', errors='replace') for s in batch.tolist()])
      lengths = np.array([len(x) for x in ids], np.int64)
      flat = np.array([t for x in ids for t in x], np.int32)
      return flat, lengths

    flat, lengths = tf.numpy_function(encode_numpy, [strings], (tf.int32, tf.int64),
                                      stateful=False, name='sentencepiece_encode')
    flat.set_shape([None])
    lengths.set_shape([None])
    return tf.RaggedTensor.from_row_lengths(flat, lengths)


def as_tokenizer(tokenizer: Any):
  """Accepts a SentencePieceTokenizer-like object, a path, bytes or a processor."""
  if tokenizer is None:
    raise ValueError('text and table need a sentencepiece tokenizer (config.input.tokenizer)')
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  # SentencePieceProcessor has a `tokenize` of its own (python strings only): wrap it.
  if hasattr(tokenizer, 'tokenize') and not isinstance(tokenizer, spm.SentencePieceProcessor):
    return tokenizer
  return SentencePieceTokenizer(tokenizer)


class TextEmbedder(base.Embedder):
  """Shared word embeddings + learned positions, LayerNorm, dropout (BERT's embedder).

  BERT also adds token_type_embeddings[0] to every token; to load BERT weights,
  add that row to `positions`.
  """

  @nn.compact
  def __call__(self, inputs, *, deterministic: bool):
    dtype = base.compute_dtype(self.shared)
    tokens = self.shared['word_embed'](inputs['ids']).astype(dtype)
    return self.finish(tokens, inputs['mask'], inputs['present'], deterministic=deterministic,
                       add_cls=False, norm=self.cfg.get('embed_norm', True))


class MlmHead(nn.Module):
  """BERT's MLM head: Dense-GELU-LayerNorm, then logits tied to the word embeddings."""
  hidden: int
  shared: Any

  @nn.compact
  def __call__(self, tokens, *, deterministic: bool = True):
    del deterministic
    dtype = base.compute_dtype(self.shared)
    word_embed = self.shared['word_embed']
    x = base.dense(self.hidden, ('embed', 'mlp'), dtype, name='transform')(base.constrain(tokens))
    x = base.layer_norm(dtype, name='norm')(base.head_activation(self.shared)(x))
    # attend() uses the embedding table in the embed module's dtype; cast to ours.
    logits = jnp.einsum('bld,vd->blv', x.astype(dtype),
                        word_embed.embedding.astype(dtype))
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('vocab',)),
                      (word_embed.num_embeddings,), jnp.float32)
    return nn.with_logical_constraint(logits + bias.astype(dtype), ('batch', 'length', 'vocab'))


def check_vocab(name: str, cfg, shared) -> None:
  word_embed = shared.get('word_embed')
  if word_embed is None:
    raise ValueError(f'modality {name} needs shared["word_embed"] (an nn.Embed from the model)')
  if word_embed.num_embeddings != cfg.vocab_size:
    raise ValueError(f'modality.{name}.vocab_size={cfg.vocab_size} but the shared word embedding '
                     f'has {word_embed.num_embeddings} rows; set both from the tokenizer')


def mlm_loss(logits, targets):
  """(sum of cross-entropy over masked tokens, number of masked tokens), fp32."""
  weights = targets['weights'].astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets['ids'])
  return jnp.sum(jnp.where(weights > 0, ce, 0.0) * weights), jnp.sum(weights)


def bert_corrupt(ids, selected, rng, cfg):
  """BERT's 80/10/10: of the selected tokens, [MASK] / a random ordinary id / unchanged."""
  choice_rng, random_rng = jax.random.split(rng)
  u = jax.random.uniform(choice_rng, ids.shape)
  random_ids = jax.random.randint(random_rng, ids.shape, FIRST_ORDINARY_ID, cfg.vocab_size,
                                  dtype=ids.dtype)
  corrupted = jnp.where(u < cfg.mask_token_prob, MASK_ID,
                        jnp.where(u < cfg.mask_token_prob + cfg.random_token_prob, random_ids, ids))
  return jnp.where(selected, corrupted, ids)


class WordModality:
  """What text and table share: `max_len` ids over the model's word embedding,
  predicted back by the tied MLM head. Subclasses name their `embedder_class`,
  their length (`default_max_len`) and their other config keys (`own_defaults`)."""
  embedder_class: type[nn.Module]
  default_max_len: int
  instance_view = 'clean'   # base.Modality: a few hidden words cannot stand for the item

  def own_defaults(self) -> dict:
    return {}

  def default_config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        'vocab_size': 8000,        # must equal the tokenizer's and config.model.vocab_size
        'encoder_layers': None,    # None: the model size's default
        'max_len': self.default_max_len,  # tokens, BOS included
        'mask_prob': 0.15,         # share of the masking units selected: text's tokens, table's spans
        **self.own_defaults()})

  def num_tokens(self, cfg) -> int:
    return cfg.max_len

  def embedder(self, cfg, hidden, shared):
    check_vocab(self.name, cfg, shared)
    return self.embedder_class(cfg, hidden, shared)

  def head(self, cfg, hidden, shared):
    check_vocab(self.name, cfg, shared)
    return MlmHead(hidden, shared)

  def masked_loss(self, predictions, targets, cfg):
    return mlm_loss(predictions, targets)


class Text(WordModality):
  """The text modality plugin (see base.Modality)."""
  name = 'text'
  code = 't'
  embedder_class = TextEmbedder
  default_max_len = 36   # paper: 36 tokens including BOS

  def own_defaults(self) -> dict:
    # mask_prob's share of real tokens (BOS excluded) is selected for MLM, and then:
    return {
        'mask_token_prob': 0.8,    # selected -> [MASK]
        'random_token_prob': 0.1,  # selected -> random ordinary id (rest: unchanged)
        'embed_norm': True,        # LayerNorm on the embeddings (False: CLIP's text has none)
        'add_eos': False,          # end with EOS (CLIP pools its end token: model.pool=last)
    }

  def batch_spec(self, cfg):
    return {'present': ((), 'bool'), 'ids': ((cfg.max_len,), 'int32'),
            'mask': ((cfg.max_len,), 'bool')}

  def preprocess(self, example, cfg, tokenizer):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if 'title_ids' in example:  # tokenised when the dataset was built
      ids = tf.cast(example['title_ids'], tf.int32)
    else:
      ids = as_tokenizer(tokenizer).tokenize(tf.reshape(example['title'], [1]))[0]
    if cfg.get('add_eos', False):
      ids = tf.concat([[BOS_ID], ids[:cfg.max_len - 2], [EOS_ID]], axis=0)
    else:
      ids = tf.concat([[BOS_ID], ids[:cfg.max_len - 1]], axis=0)
    present = tf.logical_and(tf.cast(example['present']['text'], tf.bool),
                             tf.strings.length(example['title']) > 0)
    ids = ids * tf.cast(present, tf.int32)
    length = tf.shape(ids)[0] * tf.cast(present, tf.int32)
    ids = tf.pad(ids, [[0, cfg.max_len - tf.shape(ids)[0]]])
    ids.set_shape([cfg.max_len])
    return {'present': present, 'ids': ids, 'mask': tf.range(cfg.max_len) < length}

  def mask_for_pretraining(self, inputs, rng, cfg):
    ids = inputs['ids']
    candidates = inputs['mask'] & inputs['present'][:, None] & (ids != BOS_ID) & (ids != PAD_ID)
    select_rng, corrupt_rng = jax.random.split(rng)
    selected = base.select_random(candidates, select_rng, cfg.mask_prob)
    masked = dict(inputs, ids=bert_corrupt(ids, selected, corrupt_rng, cfg))
    return masked, {'ids': ids, 'weights': selected.astype(jnp.float32)}

  def max_masked_tokens(self, cfg) -> int:
    return base.num_to_mask(cfg.max_len - 1, cfg.mask_prob)  # BOS is never selected


PLUGIN = Text()
