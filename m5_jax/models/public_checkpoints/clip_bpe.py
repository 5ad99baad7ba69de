"""CLIP's byte-level BPE (vocab.json + merges.txt of a CLIP folder) with ids in m5_jax's
order (hf_clip.clip_vocab_order), so the input pipeline tokenises titles as CLIP did.

As transformers' CLIPTokenizer: NFC, runs of white space to one space, lower case;
words by CLIP's pattern (letters, single digits, punctuation runs, English
contractions); each word's UTF-8 bytes as GPT-2's printable characters, the last
one marked `</w>`, merged by rank. No ftfy clean-up (transformers skips it too).
"""
from __future__ import annotations

import json
import os
import unicodedata

import numpy as np

from m5_jax.models.public_checkpoints.common import PythonTokenizer
from m5_jax.models.public_checkpoints.hf_clip import clip_vocab_order

START, END = '<|startoftext|>', '<|endoftext|>'
PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
           r"""|[^\s\p{L}\p{N}]+""")


def byte_characters() -> dict[int, str]:
  """GPT-2's byte -> printable character table (CLIP's bytes_to_unicode)."""
  printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
               + list(range(ord('®'), ord('ÿ') + 1)))
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def is_clip_vocab(path: str) -> bool:
  """config.input.tokenizer names a CLIP folder's vocab.json."""
  return os.path.basename(path.rstrip('/')) == 'vocab.json'


class ClipBpeTokenizer(PythonTokenizer):
  """tokenize(tf.string[N]) -> ragged int32 in m5_jax's ids; encode() for Python strings."""
  op_name = 'clip_bpe_encode'

  def __init__(self, vocab_file: str, merges_file: str | None = None):
    try:
      import regex  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError('the CLIP tokenizer needs the regex package (pip install regex) for '
                        "CLIP's Unicode word pattern") from None
    vocab_file = os.path.expanduser(vocab_file)
    merges_file = merges_file or os.path.join(os.path.dirname(vocab_file), 'merges.txt')
    for file in (vocab_file, merges_file):
      if not os.path.exists(file):
        raise FileNotFoundError(f'{file}: a CLIP tokenizer needs vocab.json and merges.txt')
    with open(vocab_file, encoding='utf-8') as f:
      pieces = json.load(f)
    with open(merges_file, encoding='utf-8') as f:
      merges = [tuple(line.split()) for line in f.read().split('\n')
                if line.strip() and not line.startswith('#version')]
    missing = [s for s in (START, END) if s not in pieces]
    if missing:
      raise ValueError(f'{vocab_file} lacks the CLIP special pieces {missing}')
    order = clip_vocab_order(len(pieces), pieces[START], pieces[END])
    clip_to_m5 = np.zeros(len(pieces), np.int64)
    clip_to_m5[order[5:]] = np.arange(5, len(order))
    clip_to_m5[pieces[START]], clip_to_m5[pieces[END]] = 2, 3
    self.ids = {piece: int(clip_to_m5[i]) for piece, i in pieces.items()}
    self.vocab_size = len(order)
    self.unk_id = 1  # m5_jax's [UNK] (CLIP's end token); byte-level BPE rarely needs it
    self.ranks = {pair: rank for rank, pair in enumerate(merges) if len(pair) == 2}
    self.bytes = byte_characters()
    self.pattern = regex.compile(PATTERN)
    self.cache: dict[str, list[int]] = {}

  def _bpe(self, word: str) -> list[int]:
    if word not in self.cache:
      parts = list(word[:-1]) + [word[-1] + '</w>']
      while len(parts) > 1:
        ranked = [(self.ranks.get(pair, len(self.ranks)), i)
                  for i, pair in enumerate(zip(parts, parts[1:]))]
        rank, first = min(ranked)
        if rank == len(self.ranks):  # no pair left to merge
          break
        best, merged, i = (parts[first], parts[first + 1]), [], 0
        while i < len(parts):
          if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
            merged.append(parts[i] + parts[i + 1])
            i += 2
          else:
            merged.append(parts[i])
            i += 1
        parts = merged
      self.cache[word] = [self.ids.get(p, self.unk_id) for p in parts]
    return self.cache[word]

  def encode(self, strings: list[str]) -> list[list[int]]:
    out = []
    for s in strings:
      s = ' '.join(unicodedata.normalize('NFC', s).split()).lower()
      out.append([i for word in self.pattern.findall(s)
                  for i in self._bpe(''.join(self.bytes[b] for b in word.encode('utf-8')))])
    return out
