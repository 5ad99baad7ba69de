"""Public pretrained checkpoints (local files) into m5_jax's towers: BERT and ViT.

`load(fmt, path, params, config, towers, include, exclude)` reads a checkpoint
(no hub access: users point at files they downloaded elsewhere) and
returns m5_jax params with the mapped leaves replaced, plus a `Report` in which
every source tensor is mapped or skipped (with why) and every target parameter is
loaded or new (left at init). A shape or name mismatch is a one-line ValueError
naming the parameter.

BERT (`hf_bert`: config.json + model.safetensors | pytorch_model.bin, vocab.txt)
into the text tower and, by `towers`, the table tower (its own copy of the
encoder; the word embeddings are shared by text and table in m5_jax anyway).
How m5_jax's text tower differs from BERT, and what the loader does about it:
  * vocabulary order: m5_jax fixes [PAD] [UNK] BOS EOS [MASK] at ids 0..4
    (m5_jax/modalities/text.py); BERT's vocab.txt has them at 0, 100..103. The
    loader permutes the vocabulary (`project_vocab_order`): [PAD] [UNK] [CLS]
    [SEP] [MASK] first, every other piece after them in vocab.txt order; the
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

ViT (`hf_vit`: ViTModel / ViTForImageClassification) into the raw image tower,
exactly when `modality.image.embed_norm=False` (ViT has no LayerNorm on its patch
embeddings) and the model is pre-LN with the checkpoint's eps; the conv patch
kernel becomes the Dense over patchify's (row, col, channel) order. Video frames
can reuse it (see `vit_targets`). A big_vision ViT `.npz` (`big_vision_vit`) loads
the same way (tanh GELU, eps 1e-6; see `big_vision_targets`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import unicodedata
from typing import Any, Callable, Mapping

import numpy as np

FORMATS = ('m5_jax', 'hf_bert', 'hf_vit', 'big_vision_vit')
# The formats' towers: which configured modalities each one can fill.
TOWERS = {'hf_bert': ('text', 'table'), 'hf_vit': ('image', 'video'), 'big_vision_vit': ('image',)}
# Filled when init_from.towers is '' (and the config has them): video only when asked,
# since its frames usually have another size than the ViT's images.
DEFAULT_TOWERS = {'hf_bert': ('text', 'table'), 'hf_vit': ('image',), 'big_vision_vit': ('image',)}
BERT_SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')  # -> m5_jax ids 0..4


@dataclasses.dataclass
class Report:
  """What happened to every source tensor and every target parameter."""
  mapped: dict[str, str] = dataclasses.field(default_factory=dict)   # target <- source(s)
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # source -> why
  new: list[str] = dataclasses.field(default_factory=list)           # targets left at init

  def summary(self) -> str:
    return (f'{len(self.mapped)} parameters loaded, {len(self.new)} new (left at init), '
            f'{len(self.skipped)} source tensors skipped')


# ----------------------------------------------------------------------------
# Reading a Hugging Face folder
# ----------------------------------------------------------------------------

def read_hf_folder(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json, {name: float32 array}) of a Hugging Face model folder."""
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'init_from.path {path}: not a folder (expected config.json + '
                            'model.safetensors or pytorch_model.bin)')
  config_file = os.path.join(path, 'config.json')
  if not os.path.exists(config_file):
    raise FileNotFoundError(f'init_from.path {path}: no config.json')
  try:
    with open(config_file) as f:
      hf_config = json.load(f)
  except ValueError as e:
    raise ValueError(f'{config_file}: not JSON ({_one_line(e)})') from None
  weights = _weight_files(path)
  tensors = {}
  for file in weights:
    tensors.update(_read_weights(file))
  return hf_config, {k: np.asarray(v, np.float32) if v.dtype != np.int64 else v
                     for k, v in tensors.items()}


def _weight_files(path: str) -> list[str]:
  for name in ('model.safetensors', 'pytorch_model.bin'):
    index = os.path.join(path, name + '.index.json')
    if os.path.exists(index):  # sharded: the index names the shards
      with open(index) as f:
        return [os.path.join(path, s) for s in sorted(set(json.load(f)['weight_map'].values()))]
    if os.path.exists(os.path.join(path, name)):
      return [os.path.join(path, name)]
  raise FileNotFoundError(f'init_from.path {path}: no model.safetensors or pytorch_model.bin')


def _read_weights(file: str) -> dict[str, np.ndarray]:
  if file.endswith('.safetensors'):
    try:
      from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(f'{file}: reading .safetensors needs the safetensors package '
                        '(pip install safetensors)') from None
    try:
      return safetensors_numpy.load_file(file)
    except Exception as e:  # pylint: disable=broad-except  (SafetensorError, OSError)
      raise ValueError(f'{file}: not a readable safetensors file ({_one_line(e)})') from None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f'{file}: reading pytorch_model.bin needs torch; convert it to '
                      'model.safetensors or install torch') from None
  try:
    state = torch.load(file, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{file}: not a readable torch state dict ({_one_line(e)})') from None
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def _one_line(e: BaseException) -> str:
  return ' '.join(str(e).split())[:200]


# ----------------------------------------------------------------------------
# Vocabulary: BERT's WordPiece vocab.txt in m5_jax's id order
# ----------------------------------------------------------------------------

def read_vocab(path: str) -> list[str]:
  """The pieces of a vocab.txt (a file, or a folder holding one), one per line, in id order."""
  file = os.path.join(path, 'vocab.txt') if os.path.isdir(path) else path
  if not os.path.exists(file):
    raise FileNotFoundError(f'{file}: no WordPiece vocabulary (vocab.txt) found')
  with open(file, encoding='utf-8') as f:
    return [line.rstrip('\n') for line in f]


def project_vocab_order(pieces: list[str]) -> np.ndarray:
  """order[new_id] = BERT id: [PAD] [UNK] [CLS] [SEP] [MASK] first (m5_jax's ids 0..4)."""
  where = {p: i for i, p in enumerate(pieces)}
  missing = [s for s in BERT_SPECIALS if s not in where]
  if missing:
    raise ValueError(f'vocab.txt lacks the special pieces {missing} (needed at m5_jax ids 0..4)')
  first = [where[s] for s in BERT_SPECIALS]
  rest = [i for i in range(len(pieces)) if i not in set(first)]
  return np.array(first + rest, np.int64)


class WordPieceTokenizer:
  """BERT's basic + WordPiece tokenisation over vocab.txt, ids in m5_jax's order.

  tokenize(tf.string[N]) -> tf.RaggedTensor int32 (the contract of
  text.SentencePieceTokenizer), so the input pipeline can use it in its place.
  `lower_case` as the checkpoint was trained (bert-base-chinese: True). CJK
  characters are single tokens, punctuation is split off, accents are stripped
  when lower-casing, as in BERT's BasicTokenizer.
  """

  def __init__(self, vocab: str | list[str], lower_case: bool = True,
               max_chars_per_word: int = 100):
    pieces = read_vocab(vocab) if isinstance(vocab, str) else list(vocab)
    order = project_vocab_order(pieces)
    self.pieces = [pieces[i] for i in order]
    self.ids = {p: i for i, p in enumerate(self.pieces)}
    self.unk_id = self.ids['[UNK]']
    self.lower_case = lower_case
    self.max_chars_per_word = max_chars_per_word

  @property
  def vocab_size(self) -> int:
    return len(self.pieces)

  def _words(self, text: str) -> list[str]:
    text = ''.join(' ' if _is_space(c) else c for c in text
                   if not (ord(c) in (0, 0xFFFD) or _is_control(c)))
    out = []
    for word in text.split():
      if self.lower_case:
        word = ''.join(c for c in unicodedata.normalize('NFD', word.lower())
                       if unicodedata.category(c) != 'Mn')
      current = ''
      for c in word:
        if _is_punctuation(c) or _is_cjk(c):
          out += [current, c] if current else [c]
          current = ''
        else:
          current += c
      if current:
        out.append(current)
    return out

  def _wordpiece(self, word: str) -> list[int]:
    if len(word) > self.max_chars_per_word:
      return [self.unk_id]
    ids, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else '##' + word[start:end]
        if piece in self.ids:
          ids.append(self.ids[piece])
          break
        end -= 1
      if end == start:
        return [self.unk_id]
      start = end
    return ids

  def encode(self, strings: list[str]) -> list[list[int]]:
    return [[i for w in self._words(s) for i in self._wordpiece(w)] for s in strings]

  def tokenize(self, strings):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def encode_numpy(batch):
      ids = self.encode([s.decode('utf-8', errors='replace') for s in batch.tolist()])
      return (np.array([t for x in ids for t in x], np.int32),
              np.array([len(x) for x in ids], np.int64))

    flat, lengths = tf.numpy_function(encode_numpy, [strings], (tf.int32, tf.int64),
                                      stateful=False, name='wordpiece_encode')
    flat.set_shape([None])
    lengths.set_shape([None])
    return tf.RaggedTensor.from_row_lengths(flat, lengths)


def _is_space(c):
  return c in ' \t\n\r' or unicodedata.category(c) == 'Zs'


def _is_control(c):
  return c not in '\t\n\r' and unicodedata.category(c).startswith('C')


def _is_punctuation(c):
  cp = ord(c)
  return (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
          or unicodedata.category(c).startswith('P'))


def _is_cjk(c):
  cp = ord(c)
  return any(lo <= cp <= hi for lo, hi in (
      (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
      (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


# ----------------------------------------------------------------------------
# BERT -> m5_jax: the mapping table
# ----------------------------------------------------------------------------

def _linear(w, shape):
  """torch Linear weight [out, in] -> kernel [in..., out...] (Flax Dense's transpose)."""
  return w.T.reshape(shape)


def _same(w, shape):
  return w.reshape(shape)


# Per encoder layer: (BERT name under encoder.layer.{i}., m5_jax path under
# transformer/layer_{i}/, conversion). Reshapes split hidden into (heads, head_dim).
BERT_LAYER = (
    ('attention.self.query.weight', 'attention/query/kernel', _linear),
    ('attention.self.query.bias', 'attention/query/bias', _same),
    ('attention.self.key.weight', 'attention/key/kernel', _linear),
    ('attention.self.key.bias', 'attention/key/bias', _same),
    ('attention.self.value.weight', 'attention/value/kernel', _linear),
    ('attention.self.value.bias', 'attention/value/bias', _same),
    ('attention.output.dense.weight', 'attention/out/kernel', _linear),
    ('attention.output.dense.bias', 'attention/out/bias', _same),
    ('attention.output.LayerNorm.weight', 'attention_ln/scale', _same),
    ('attention.output.LayerNorm.bias', 'attention_ln/bias', _same),
    ('intermediate.dense.weight', 'mlp/wi/kernel', _linear),
    ('intermediate.dense.bias', 'mlp/wi/bias', _same),
    ('output.dense.weight', 'mlp/wo/kernel', _linear),
    ('output.dense.bias', 'mlp/wo/bias', _same),
    ('output.LayerNorm.weight', 'mlp_ln/scale', _same),
    ('output.LayerNorm.bias', 'mlp_ln/bias', _same),
)
# Per tower (text or table): the embedding LayerNorm and the MLM head transform.
BERT_TOWER = (
    ('embeddings.LayerNorm.weight', 'embedders_{m}/finish/norm/scale', _same),
    ('embeddings.LayerNorm.bias', 'embedders_{m}/finish/norm/bias', _same),
    ('cls.predictions.transform.dense.weight', 'heads_{m}/transform/kernel', _linear),
    ('cls.predictions.transform.dense.bias', 'heads_{m}/transform/bias', _same),
    ('cls.predictions.transform.LayerNorm.weight', 'heads_{m}/norm/scale', _same),
    ('cls.predictions.transform.LayerNorm.bias', 'heads_{m}/norm/bias', _same),
)
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


def check_architecture(kind: str, hf_config: Mapping[str, Any], config,
                       wanted: Mapping[str, Any]) -> None:
  """Each config key (model.* / modality.*) has the checkpoint's value (one line naming it)."""
  if hf_config.get('model_type', kind) != kind:
    raise ValueError(f'init_from.format=hf_{kind} but config.json has model_type='
                     f"{hf_config.get('model_type')!r}")
  for key, value in wanted.items():
    node = config
    for part in key.split('.'):
      node = node.get(part) if part in node else None
    got = node
    differs = (got is None or abs(got - value) > 1e-15 * max(1, abs(value))
               if isinstance(value, float) else got != value)
    if differs:
      raise ValueError(f'the {kind.upper()} checkpoint needs --config.{key}={value} (got {got})')
  act = hf_config.get('hidden_act', 'gelu')
  if act != 'gelu':
    raise ValueError(f"the {kind.upper()} checkpoint uses hidden_act={act!r}; m5_jax has the "
                     "exact 'gelu'")


def _transformer_fields(hf_config, pre_ln: bool) -> dict[str, Any]:
  return {'model.hidden': hf_config['hidden_size'], 'model.heads': hf_config['num_attention_heads'],
          'model.mlp_dim': hf_config['intermediate_size'], 'model.pre_ln': pre_ln,
          'model.layer_norm_eps': hf_config.get('layer_norm_eps', 1e-12),
          'model.gelu_approximate': False}


class _Targets:
  """Collects {m5_jax path: (source names, shape -> array)}; every source used or skipped."""

  def __init__(self, kind: str, tensors: Mapping[str, np.ndarray], path: str):
    self.kind, self.tensors, self.path = kind, tensors, path
    self.targets: dict[str, tuple[str, Callable]] = {}
    self.used: set[str] = set()

  def source(self, name):
    if name not in self.tensors:
      raise ValueError(f'{self.kind} checkpoint {self.path}: tensor {name} is missing')
    return self.tensors[name]

  def add(self, target: str, names: list[str], fn: Callable) -> None:
    self.targets[target] = (' + '.join(names),
                            lambda shape: fn(*[self.source(n) for n in names], shape))
    self.used.update(names)

  def add_layers(self, stack: str, depth: int, table,
                 source: str = 'encoder.layer.{i}.{name}') -> None:
    for i in range(depth):
      for name, target, fn in table:
        self.add(f'{stack}/layer_{i}/{target}', [source.format(i=i, name=name)], fn)

  def result(self, skip_patterns) -> tuple[dict[str, tuple[str, Callable]], dict[str, str]]:
    skipped = {}
    for name in self.tensors:
      if name in self.used:
        continue
      why = next((w for pattern, w in skip_patterns if re.search(pattern, name)), None)
      if why is None:
        raise ValueError(f'{self.kind} checkpoint {self.path}: tensor {name} '
                         f'{self.tensors[name].shape} has no place in m5_jax')
      skipped[name] = why
    return self.targets, skipped


def bert_targets(tensors: Mapping[str, np.ndarray], hf_config, config, path: str,
                 towers: tuple[str, ...]) -> tuple[dict[str, tuple[str, Callable]], dict[str, str]]:
  """{m5_jax path: (source description, shape -> array)} and {source: why skipped}."""
  check_architecture('bert', hf_config, config, _transformer_fields(hf_config, pre_ln=False))
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
  t = _Targets('BERT', tensors, path)
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
  # that sees every modality; otherwise each tower's encoder gets its own copy.
  stacks = (['fusion/transformer'] if config.model.fusion == 'single_stream'
            else [f'encoders_{m}/transformer' for m in towers])
  for stack in stacks:
    t.add_layers(stack, hf_config['num_hidden_layers'], BERT_LAYER)
  return t.result(BERT_SKIPPED)


# ViT (Hugging Face ViTModel / ViTForImageClassification) into the raw image tower:
# pre-LN layers, [CLS] + learned positions, no LayerNorm on the patch embeddings
# (modality.image.embed_norm=False), a final LayerNorm.
VIT_LAYER = tuple((name.replace('attention.self.', 'attention.attention.'), target, fn)
                  for name, target, fn in BERT_LAYER if 'LayerNorm' not in name) + (
    ('layernorm_before.weight', 'attention_ln/scale', _same),
    ('layernorm_before.bias', 'attention_ln/bias', _same),
    ('layernorm_after.weight', 'mlp_ln/scale', _same),
    ('layernorm_after.bias', 'mlp_ln/bias', _same),
)
VIT_SKIPPED = (
    (r'^pooler\.', 'ViT pooler (dense + tanh): m5_jax pools by mean / first token'),
    (r'^classifier\.', 'the ImageNet classification head'),
    (r'^embeddings\.mask_token$', 'masked-image-modeling token: m5_jax zeroes masked patches'),
)


def _vit_patch_kernel(w, shape):
  """Conv [D, C, p, p] -> Dense kernel over patchify's (row, col, channel) order [p*p*C, D]."""
  return w.transpose(2, 3, 1, 0).reshape(shape)


def vit_targets(tensors: Mapping[str, np.ndarray], hf_config, config, path: str,
                towers: tuple[str, ...]) -> tuple[dict[str, tuple[str, Callable]], dict[str, str]]:
  """Image: exact (the ViT itself). Video (raw frames): its frame embedder reuses ViT's
  patch embedding and patch positions, its encoder starts from ViT's layers; the frame
  [CLS], temporal positions and the embedding LayerNorm stay new (an initialisation,
  not an equivalence: frames are mean-pooled patches there)."""
  grid = hf_config['image_size'] // hf_config['patch_size']
  wanted = dict(_transformer_fields(hf_config, pre_ln=True))
  if 'image' in towers:
    wanted.update({'modality.image.form': 'raw', 'modality.image.embed_norm': False,
                   'modality.image.image_size': hf_config['image_size'],
                   'modality.image.patch_size': hf_config['patch_size']})
  if 'video' in towers:
    wanted.update({'modality.video.form': 'raw',
                   'modality.video.patch_size': hf_config['patch_size']})
    if config.modality.video.frame_size != grid * hf_config['patch_size']:
      raise ValueError(f'the ViT checkpoint has a {grid}x{grid} patch grid: needs '
                       f'--config.modality.video.frame_size={grid * hf_config["patch_size"]} '
                       f'(got {config.modality.video.frame_size})')
  check_architecture('vit', hf_config, config, wanted)
  if hf_config.get('num_channels', 3) != 3:
    raise ValueError(f"the ViT checkpoint has num_channels={hf_config['num_channels']}; "
                     'm5_jax images are RGB')
  t = _Targets('ViT', tensors, path)
  for m in towers:
    t.add(f'embedders_{m}/patch/kernel', ['embeddings.patch_embeddings.projection.weight'],
          _vit_patch_kernel)
    t.add(f'embedders_{m}/patch/bias', ['embeddings.patch_embeddings.projection.bias'], _same)
    if m == 'image':
      t.add('embedders_image/finish/cls', ['embeddings.cls_token'], _same)
      t.add('embedders_image/finish/positions', ['embeddings.position_embeddings'], _same)
    else:  # the patch rows of ViT's positions (row 0 is its [CLS])
      t.add(f'embedders_{m}/spatial_positions', ['embeddings.position_embeddings'],
            lambda p, shape: p[0, 1:].reshape(shape))
    t.add_layers(f'encoders_{m}/transformer', hf_config['num_hidden_layers'], VIT_LAYER)
    t.add(f'encoders_{m}/transformer/final_ln/scale', ['layernorm.weight'], _same)
    t.add(f'encoders_{m}/transformer/final_ln/bias', ['layernorm.bias'], _same)
  return t.result(VIT_SKIPPED)


def vit_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """ViTModel names without the 'vit.' prefix of ViTForImageClassification."""
  return {re.sub(r'^vit\.', '', k): v for k, v in tensors.items()}


# big_vision ViT (.npz, '/'-joined flax names; big_vision/models/vit.py): the same
# pre-LN layers in flax's own layout (3-D q/k/v kernels, as m5_jax's), tanh-GELU
# (flax's nn.gelu default), LayerNorm eps 1e-6, positions added to the patches only
# and then the [CLS] prepended (pool_type 'tok'; gap / MAP-pooled models have no
# [CLS]: it stays new, and their MAP head is skipped).
BIG_VISION_LAYER = tuple(
    (f'MultiHeadDotProductAttention_0/{p}/{k}', f'attention/{p}/{k}', _same)
    for p in ('query', 'key', 'value', 'out') for k in ('kernel', 'bias')) + (
    ('LayerNorm_0/scale', 'attention_ln/scale', _same),
    ('LayerNorm_0/bias', 'attention_ln/bias', _same),
    ('LayerNorm_1/scale', 'mlp_ln/scale', _same),
    ('LayerNorm_1/bias', 'mlp_ln/bias', _same),
    ('MlpBlock_0/Dense_0/kernel', 'mlp/wi/kernel', _same),
    ('MlpBlock_0/Dense_0/bias', 'mlp/wi/bias', _same),
    ('MlpBlock_0/Dense_1/kernel', 'mlp/wo/kernel', _same),
    ('MlpBlock_0/Dense_1/bias', 'mlp/wo/bias', _same),
)
BIG_VISION_SKIPPED = (
    (r'^head/', 'the classification head'),
    (r'^pre_logits/', 'the pre-logits layer (dense + tanh)'),
    (r'^MAPHead_0/', 'multihead attention pooling: m5_jax pools by mean / first token'),
)
BIG_VISION_POSITIONS = ('pos_embedding', 'Transformer/pos_embedding',
                        'Transformer/posembed_input/pos_embedding')  # newest first


def read_big_vision(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(the architecture read off the shapes, {name: float32 array}) of a big_vision ViT .npz."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'init_from.path {path}: not a big_vision .npz file')
  try:
    with np.load(path, allow_pickle=False) as f:
      tensors = {k: np.asarray(f[k], np.float32) for k in f.files}
  except (ValueError, OSError) as e:
    raise ValueError(f'{path}: not a readable .npz ({_one_line(e)})') from None
  if 'embedding/kernel' not in tensors:
    raise ValueError(f'{path}: no embedding/kernel: not a big_vision ViT')
  kernel = tensors['embedding/kernel']
  positions = next((tensors[k] for k in BIG_VISION_POSITIONS if k in tensors), None)
  if positions is None:
    raise ValueError(f'{path}: no pos_embedding (sincos position embeddings are not supported)')
  patches = positions.shape[1] - (1 if _has_cls_row(positions) else 0)
  grid = int(round(np.sqrt(patches)))
  depth = len({k.split('/')[1] for k in tensors if k.startswith('Transformer/encoderblock_')})
  block = 'Transformer/encoderblock_0/'
  return ({'model_type': 'vit', 'hidden_size': kernel.shape[-1], 'patch_size': kernel.shape[0],
           'image_size': grid * kernel.shape[0], 'num_channels': kernel.shape[2],
           'num_attention_heads':
               tensors[block + 'MultiHeadDotProductAttention_0/query/kernel'].shape[1],
           'intermediate_size': tensors[block + 'MlpBlock_0/Dense_0/kernel'].shape[1],
           'num_hidden_layers': depth, 'layer_norm_eps': 1e-6}, tensors)


def _has_cls_row(positions) -> bool:
  """Old ViT checkpoints added positions after the [CLS] (N + 1 rows, N a square)."""
  n = positions.shape[1]
  return int(np.sqrt(n - 1)) ** 2 == n - 1 and int(np.sqrt(n)) ** 2 != n


def big_vision_targets(tensors, bv_config, config, path, towers):
  del towers  # the image tower
  check_architecture('vit', bv_config, config, {
      **_transformer_fields(bv_config, pre_ln=True), 'model.gelu_approximate': True,
      'modality.image.form': 'raw', 'modality.image.embed_norm': False,
      'modality.image.image_size': bv_config['image_size'],
      'modality.image.patch_size': bv_config['patch_size']})
  if bv_config['num_channels'] != 3:
    raise ValueError(f"the ViT checkpoint has {bv_config['num_channels']} input channels; "
                     'm5_jax images are RGB')
  t = _Targets('big_vision ViT', tensors, path)
  t.add('embedders_image/patch/kernel', ['embedding/kernel'], _same)  # HWIO = patchify's order
  t.add('embedders_image/patch/bias', ['embedding/bias'], _same)
  name = next(k for k in BIG_VISION_POSITIONS if k in tensors)
  if _has_cls_row(tensors[name]):  # old layout: row 0 is the [CLS]'s position
    t.add('embedders_image/finish/positions', [name], lambda p, shape: p[0].reshape(shape))
  else:  # the [CLS] has no position: a zero row
    t.add('embedders_image/finish/positions', [name],
          lambda p, shape: np.concatenate([np.zeros_like(p[0, :1]), p[0]]).reshape(shape))
  if 'cls' in tensors:
    t.add('embedders_image/finish/cls', ['cls'], _same)
  t.add_layers('encoders_image/transformer', bv_config['num_hidden_layers'], BIG_VISION_LAYER,
               source='Transformer/encoderblock_{i}/{name}')
  t.add('encoders_image/transformer/final_ln/scale', ['Transformer/encoder_norm/scale'], _same)
  t.add('encoders_image/transformer/final_ln/bias', ['Transformer/encoder_norm/bias'], _same)
  return t.result(BIG_VISION_SKIPPED)


# format -> (reader, source name normaliser, target builder)
CONVERTERS = {'hf_bert': (read_hf_folder, bert_names, bert_targets),
              'hf_vit': (read_hf_folder, vit_names, vit_targets),
              'big_vision_vit': (read_big_vision, dict, big_vision_targets)}


# ----------------------------------------------------------------------------
# Putting it together
# ----------------------------------------------------------------------------

def _flatten(tree, prefix=''):
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}{k}/'))
    return out
  return {prefix[:-1]: tree}


def _replace(tree, values: Mapping[str, Any], prefix=''):
  if isinstance(tree, Mapping):
    return {k: _replace(v, values, f'{prefix}{k}/') for k, v in tree.items()}
  return values.get(prefix[:-1], tree)


def _unstack_scanned(flat: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, int]]:
  """For scan_layers models: per-layer path -> (stacked path, layer index)."""
  out = {}
  for path, shape in flat.items():
    match = re.match(r'(.*/transformer)/layers/block/(.*)$', path)
    if match:
      for i in range(shape[0]):
        out[f'{match[1]}/layer_{i}/{match[2]}'] = (path, i)
  return out


def resolve_towers(fmt: str, config, towers: str) -> tuple[str, ...]:
  known = TOWERS[fmt]
  chosen = tuple(t for t in towers.split(',') if t) if towers else tuple(
      m for m in DEFAULT_TOWERS[fmt] if m in config.modalities)
  bad = [t for t in chosen if t not in known or t not in config.modalities]
  if bad or not chosen:
    present = ', '.join(m for m in known if m in config.modalities) or 'none'
    raise ValueError(f'init_from.towers={towers!r}: {fmt} fills {", ".join(known)}, of which '
                     f'this config has {present}')
  return chosen


def convert(fmt: str, path: str, params: Mapping[str, Any], config, towers: str = '',
            include: str = '.*', exclude: str = '') -> tuple[dict[str, np.ndarray], Report]:
  """({'/'-joined m5_jax path: float32 array}, Report) for the checkpoint at `path`.

  `params` is the target tree; only its leaves' shapes are read (jax.Arrays of any
  sharding, or ShapeDtypeStructs). `towers`: comma-separated modalities to fill
  ('' = the format's DEFAULT_TOWERS that the config has); `include` / `exclude` are
  regexes on m5_jax paths (an excluded parameter stays at init and is listed as new).
  A scan_layers stack is filled whole: its depth must be the checkpoint's.
  """
  if fmt not in TOWERS:
    raise ValueError(f'init_from.format={fmt!r}: public formats are {", ".join(TOWERS)}')
  chosen = resolve_towers(fmt, config, towers)
  read, names, build_targets = CONVERTERS[fmt]
  hf_config, tensors = read(path)
  tensors = names(tensors)
  targets, skipped = build_targets(tensors, hf_config, config, path, chosen)
  leaves = _flatten(params)
  flat = {k: tuple(np.shape(v)) for k, v in leaves.items()}
  scanned = _unstack_scanned(flat)
  include_re, exclude_re = re.compile(include), re.compile(exclude) if exclude else None
  values, report = {}, Report(skipped=dict(skipped))
  stacked: dict[str, dict[int, np.ndarray]] = {}
  for target, (src, fn) in targets.items():
    if not include_re.search(target) or (exclude_re and exclude_re.search(target)):
      report.skipped[src] = f'init_from include/exclude leaves {target} at init'
      continue
    stacked_path, layer = scanned.get(target, (None, None))
    shape = flat[stacked_path][1:] if stacked_path else flat.get(target)
    if shape is None:
      raise ValueError(f'{src} maps to {target}, which this model does not have (encoder '
                       f"depth smaller than the checkpoint's {hf_config.get('num_hidden_layers')} "
                       'layers? modality.<m>.encoder_layers sets it)')
    try:
      value = np.asarray(fn(shape), np.float32)
    except ValueError:
      raise ValueError(f'{src} {_source_shapes(src, tensors)} does not fit {target} '
                       f'{tuple(shape)}') from None
    if stacked_path:
      stacked.setdefault(stacked_path, {})[layer] = value
    else:
      values[target] = value
    report.mapped[target] = src
  for stacked_path, layers in stacked.items():
    depth = flat[stacked_path][0]
    if sorted(layers) != list(range(depth)):
      raise ValueError(f'{stacked_path}: a scanned stack of {depth} layers, but the checkpoint '
                       f'fills layers {sorted(layers)}; set the depth to the checkpoint\'s')
    values[stacked_path] = np.stack([layers[i] for i in range(depth)])
  report.new = sorted(p for p in flat if p not in values)
  used = {n for src in report.mapped.values() for n in src.split(' + ')}
  report.skipped = {n: why for n, why in report.skipped.items() if n not in used}
  return values, report


def load(fmt: str, path: str, params: Mapping[str, Any], config, towers: str = '',
         include: str = '.*', exclude: str = '') -> tuple[dict, Report]:
  """`params` with the converted leaves replaced (numpy), and the Report (see `convert`)."""
  values, report = convert(fmt, path, params, config, towers, include, exclude)
  return _replace(params, values), report


def bert_model_config(path: str) -> dict[str, Any]:
  """The m5_jax config fields a BERT folder fixes (for configs/bert_init.py)."""
  with open(os.path.join(os.path.expanduser(path), 'config.json')) as f:
    c = json.load(f)
  return dict(hidden=c['hidden_size'], heads=c['num_attention_heads'],
              mlp_dim=c['intermediate_size'], layers=c['num_hidden_layers'],
              vocab_size=c['vocab_size'], layer_norm_eps=c.get('layer_norm_eps', 1e-12),
              max_positions=c['max_position_embeddings'])


def is_wordpiece_vocab(path: str) -> bool:
  """config.input.tokenizer names a WordPiece vocab.txt rather than a sentencepiece model."""
  return os.path.basename(path.rstrip('/')) == 'vocab.txt'


def wordpiece_tokenizer(path: str) -> WordPieceTokenizer:
  """The vocab.txt at `path`; lower-casing as its folder's tokenizer_config.json says
  (do_lower_case, default True as in BERT)."""
  path = os.path.expanduser(path)
  lower_case = True
  config_file = os.path.join(os.path.dirname(path), 'tokenizer_config.json')
  if os.path.exists(config_file):
    with open(config_file) as f:
      lower_case = bool(json.load(f).get('do_lower_case', True))
  return WordPieceTokenizer(path, lower_case=lower_case)


def _source_shapes(src: str, tensors) -> str:
  shapes = [tuple(tensors[n].shape) for n in src.split(' + ') if n in tensors]
  return ' + '.join(map(str, shapes))
