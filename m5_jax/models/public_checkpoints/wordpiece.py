"""BERT's WordPiece vocab.txt in m5_jax's id order, and a tokenizer over it for tf.data."""
from __future__ import annotations

import json
import os
import unicodedata

import numpy as np

from m5_jax.models.public_checkpoints.common import PythonTokenizer

BERT_SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')  # -> m5_jax ids 0..4


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


class WordPieceTokenizer(PythonTokenizer):
  """BERT's basic + WordPiece tokenisation over vocab.txt, ids in m5_jax's order.

  tokenize(tf.string[N]) -> tf.RaggedTensor int32 (the contract of
  text.SentencePieceTokenizer), so the input pipeline can use it in its place.
  `lower_case` as the checkpoint was trained (bert-base-chinese: True). CJK
  characters are single tokens, punctuation is split off, accents are stripped
  when lower-casing, as in BERT's BasicTokenizer.
  """

  op_name = 'wordpiece_encode'

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
