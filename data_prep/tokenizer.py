r"""Trains the project's sentencepiece tokenizer on a release's pretraining split.

    python -m data_prep.tokenizer --manual_dir RELEASE [--out PATH.model] [--vocab_size 8000]

Text: every title, and every table key and value (one sentence each), of the
items listed in the pretraining split; the annotations are streamed, never
loaded whole. Fields with bad bytes or a malformed table are skipped and counted.

Model: unigram, byte fallback (no character is ever <unk>), character coverage
0.9995 (Chinese), NFKC normalisation, and the ids every other part relies on:

    pad=0  unk=1  bos=2 ([CLS])  eos=3 ([SEP])  [MASK]=4 (user-defined symbol)

Every character the coverage asks for needs its own piece. When the text has more
than the vocabulary holds beside the 261 special and byte pieces (e.g. a
1000-piece model on ~1100 distinct Chinese characters), the coverage is lowered
to the highest value that fits, with one line saying so: the rarer characters
fall back to bytes. A vocabulary too small for coverage 0.98 (sentencepiece's
lowest) is a one-line error naming the smallest that fits.

The default output is `<manual_dir>/spm.model`, beside the data, where the TFDS
builder (data_prep/m5product) looks for it to store token ids: train the tokenizer
before `tfds build`. It is written under a temporary name and renamed, so a failed
run leaves no partial model. A sidecar `<out>.json` records the tokenizer's identity: pieces, the
requested and the used coverage, and the sha256 of the .model file.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import sys
import time
from typing import Callable, Iterable, Iterator

import numpy as np
import sentencepiece as spm

from data_prep import release

PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 2, 3, 4
MASK_PIECE = '[MASK]'
NORMALIZATION = 'nmt_nfkc'
# Pieces that are not learned from the text: pad, unk, bos, eos, [MASK], 256 bytes.
META_PIECES = ('<pad>', '<unk>', '<s>', '</s>', MASK_PIECE) + tuple(f'<0x{b:02X}>' for b in range(256))
# The trainer replaces meta pieces inside the normalised text with a tab, which
# counts towards the coverage but never needs a piece.
_META_IN_TEXT = re.compile('|'.join(re.escape(p) for p in sorted(META_PIECES, key=len, reverse=True)))
_BOUNDARY = '\t'
SIDECAR_FORMAT = 'm5-tokenizer/1'
DEFAULT_FILE = 'spm.model'  # in the release folder; the builder config field `tokenizer`
MIN_COVERAGE = 0.98  # sentencepiece refuses a lower character coverage


def iter_training_text(root: str, layout: release.ReleaseLayout = release.ReleaseLayout(),
                       skipped: collections.Counter | None = None,
                       split: str = 'pretrain') -> Iterator[str]:
  """Titles, table keys and table values of the split's items, in file order."""
  skipped = skipped if skipped is not None else collections.Counter()
  ids = set(release.read_id_list(layout.split_path(root, split)))
  for item_id, record in release.iter_annotations(os.path.join(root, layout.annotations)):
    if item_id not in ids or not isinstance(record, dict):
      continue
    title = record.get('title')
    if isinstance(title, str) and title.strip():
      if release.has_bad_encoding(title):
        skipped['title/bad_encoding'] += 1
      else:
        yield title.strip()
    pv = record.get('pv')
    if isinstance(pv, str) and pv.strip():
      if release.has_bad_encoding(pv):
        skipped['pv/bad_encoding'] += 1
        continue
      try:
        pairs = release.parse_pv(pv)
      except release.MalformedPV:
        skipped['pv/malformed_field'] += 1
        continue
      for key, value in pairs:
        yield key
        if value:
          yield value


class CharacterCounts:
  """Character frequencies of the text as the trainer sees it (normalised), to
  predict how many characters a coverage requires."""

  def __init__(self):
    self._normalizer = spm.SentencePieceNormalizer(rule_name=NORMALIZATION)
    self.counts = collections.Counter()
    self.sentences = 0

  def add(self, sentence: str) -> None:
    text = self._normalizer.normalize(sentence)
    if '<' in text or '[' in text:
      text = _META_IN_TEXT.sub(_BOUNDARY, text)
    self.counts.update(text)
    self.sentences += 1

  def _sorted(self) -> tuple[np.ndarray, np.ndarray, int]:
    """(is a boundary, count) per character, most frequent first; the total."""
    ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])
    boundary = np.array([c == _BOUNDARY for c, _ in ranked], bool)
    counts = np.array([n for _, n in ranked], np.int64)
    return boundary, counts, int(counts.sum())

  def required(self, coverage: float) -> int:
    """Characters the trainer keeps at this coverage: the most frequent ones until
    their share, in float32 as the trainer computes it, reaches the coverage."""
    boundary, counts, total = self._sorted()
    before = np.concatenate([[0], np.cumsum(counts)[:-1]]) / max(total, 1)
    reached = np.flatnonzero(before.astype(np.float32) >= np.float32(coverage))
    taken = reached[0] if reached.size else len(counts)
    return int(taken - boundary[:taken].sum())

  def coverage_for(self, max_chars: int) -> float:
    """The highest coverage (4 decimals, rounded down) keeping at most max_chars."""
    boundary, counts, total = self._sorted()
    kept = np.cumsum(~boundary)
    taken = int(np.searchsorted(kept, max_chars, side='right'))  # characters iterated
    share = float(np.float32(counts[:taken].sum() / max(total, 1)))
    coverage = np.floor(share * 1e4) / 1e4
    while coverage > 0 and self.required(coverage) > max_chars:  # float32 edge
      coverage = round(coverage - 1e-4, 4)
    return float(coverage)


def _sentences(source) -> Iterable[str]:
  return source() if callable(source) else source


def _train_once(sentences: Iterable[str], model_file, vocab_size: int,
                character_coverage: float, max_sentences: int) -> None:
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences),
      model_writer=model_file,
      model_type='unigram',
      vocab_size=vocab_size,
      # A small corpus (mini) cannot fill a large vocabulary: allow fewer pieces.
      hard_vocab_limit=False,
      byte_fallback=True,
      character_coverage=character_coverage,
      normalization_rule_name=NORMALIZATION,
      split_digits=True,
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      user_defined_symbols=[MASK_PIECE],
      # Bounded memory on the full release: a uniform sample of sentences.
      input_sentence_size=max_sentences,
      shuffle_input_sentence=True,
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
  )


def _spm_error(e: RuntimeError) -> str:
  """sentencepiece's message without its source location, on one line."""
  text = ' '.join(str(e).split())
  return re.sub(r'^\w+: \S+\(\d+\) ', '', text)


def train(sentences: Iterable[str] | Callable[[], Iterable[str]], out_path: str,
          vocab_size: int = 8000, character_coverage: float = 0.9995,
          max_sentences: int = 10_000_000) -> str:
  """Trains on the sentences; writes out_path (a .model file) and out_path + '.json'.

  `sentences` is an iterable, or a function returning a fresh one (the text is
  read a second time if the coverage has to be lowered; a one-shot iterator is
  kept in memory for that). Raises ValueError, on one line, for a request that
  cannot be met.
  """
  if not out_path.endswith('.model'):
    raise ValueError(f'--out must end with .model, got {out_path!r}')
  if not MIN_COVERAGE <= character_coverage <= 1.0:
    raise ValueError(f'--character_coverage must be in [{MIN_COVERAGE}, 1], got {character_coverage}')
  room = vocab_size - len(META_PIECES)
  if room < 1:
    raise ValueError(f'--vocab_size {vocab_size} leaves no piece for any character: '
                     f'the special and byte-fallback pieces take {len(META_PIECES)}')
  if not callable(sentences) and iter(sentences) is sentences:
    sentences = list(sentences)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  tmp_path = f'{out_path}.tmp{os.getpid()}'
  chars = CharacterCounts()

  def counted(text):
    for sentence in text:
      chars.add(sentence)
      yield sentence

  coverage = character_coverage
  try:
    try:
      with open(tmp_path, 'wb') as f:
        _train_once(counted(_sentences(sentences)), f, vocab_size, coverage, max_sentences)
    except RuntimeError as e:
      if not chars.sentences:
        raise ValueError('no training text (the split lists no item with a title or table)') from None
      if chars.required(coverage) <= room:
        raise ValueError(f'sentencepiece: {_spm_error(e)}') from None
      coverage = chars.coverage_for(room)
      if coverage < MIN_COVERAGE:
        need = len(META_PIECES) + chars.required(MIN_COVERAGE)
        raise ValueError(f'--vocab_size {vocab_size} is too small for this text: even coverage '
                         f'{MIN_COVERAGE} needs {chars.required(MIN_COVERAGE)} characters beside the '
                         f'{len(META_PIECES)} special and byte pieces; use --vocab_size {need} or '
                         'more') from None
      print(f'tokenizer: {chars.required(character_coverage)} characters at coverage '
            f'{character_coverage} do not fit {vocab_size} pieces ({len(META_PIECES)} special '
            f'and byte pieces); coverage lowered to {coverage} ({chars.required(coverage)} '
            f'characters, rarer ones fall back to bytes)', flush=True)
      try:
        with open(tmp_path, 'wb') as f:
          _train_once(_sentences(sentences), f, vocab_size, coverage, max_sentences)
      except RuntimeError as e2:
        # Only a sampled corpus (over max_sentences) or sentences over 4192 bytes
        # (which sentencepiece drops) can count differently.
        raise ValueError(f'sentencepiece at coverage {coverage}: {_spm_error(e2)}; '
                         f'pass a lower --character_coverage') from None
    with open(tmp_path, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    pieces = spm.SentencePieceProcessor(model_file=tmp_path).get_piece_size()
    sidecar = out_path + '.json'
    if os.path.exists(sidecar):
      os.remove(sidecar)  # never a sidecar describing another model
    os.replace(tmp_path, out_path)
  finally:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
  identity = {'format': SIDECAR_FORMAT, 'model': os.path.basename(out_path), 'sha256': digest,
              'pieces': pieces, 'vocab_size': vocab_size,
              'character_coverage': coverage, 'character_coverage_requested': character_coverage,
              'characters': len(chars.counts), 'sentences': chars.sentences,
              'normalization': NORMALIZATION, 'byte_fallback': True}
  with open(sidecar + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(identity, f, indent=1)
  os.replace(sidecar + '.tmp', sidecar)
  return out_path


def load(path: str) -> spm.SentencePieceProcessor:
  """Loads a model and checks the special ids this project relies on."""
  sp = spm.SentencePieceProcessor(model_file=path)
  got = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.piece_to_id(MASK_PIECE))
  want = (PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID)
  if got != want:
    raise ValueError(f'{path}: special ids (pad, unk, bos, eos, [MASK]) are {got}, want {want}')
  return sp


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--manual_dir', required=True, help='the release folder')
  parser.add_argument('--out', default=None,
                      help=f'PATH.model (default: <manual_dir>/{DEFAULT_FILE}, where the builder '
                      'looks for it)')
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--character_coverage', type=float, default=0.9995)
  parser.add_argument('--annotations', default=release.ReleaseLayout.annotations,
                      help='annotations file name inside the release')
  args = parser.parse_args(argv)
  layout = release.ReleaseLayout(annotations=args.annotations)
  out = args.out or os.path.join(args.manual_dir, DEFAULT_FILE)
  for path in (os.path.join(args.manual_dir, layout.annotations),
               layout.split_path(args.manual_dir, 'pretrain')):
    if not os.path.isfile(path):
      print(f'error: {path} not found', file=sys.stderr)
      return 2
  skipped = collections.Counter()
  counted = collections.Counter()

  def counting(sentences):
    start = time.time()
    for s in sentences:
      counted['sentences'] += 1
      if counted['sentences'] % 1_000_000 == 0:
        rate = counted['sentences'] / (time.time() - start)
        print(f'  {counted["sentences"]:,} sentences read ({rate:,.0f}/s)', flush=True)
      yield s

  def text():
    skipped.clear()
    counted.clear()
    return counting(iter_training_text(args.manual_dir, layout, skipped))

  start = time.time()
  try:
    train(text, out, args.vocab_size, args.character_coverage)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  sp = load(out)
  print(f'tokenizer: {out} ({sp.get_piece_size()} pieces) from {counted["sentences"]:,} sentences '
        f'in {time.time() - start:.1f}s; skipped {dict(skipped) or 0}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
