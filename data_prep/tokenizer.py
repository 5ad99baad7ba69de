r"""Trains the project's sentencepiece tokenizer on a release's pretraining split.

    python -m data_prep.tokenizer --manual_dir RELEASE [--out PATH.model] [--vocab_size 8000]

Text: every title, and every table key and value (one sentence each), of the
items listed in the pretraining split; the annotations are streamed, never
loaded whole. Fields with bad bytes or a malformed table are skipped and counted.

Model: unigram, byte fallback (no character is ever <unk>), character coverage
0.9995 (Chinese), NFKC normalisation, and the ids every other part relies on:

    pad=0  unk=1  bos=2 ([CLS])  eos=3 ([SEP])  [MASK]=4 (user-defined symbol)

The default output is `<manual_dir>/spm_<vocab_size>.model`, beside the data.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from typing import Iterator

import sentencepiece as spm

from data_prep import release

PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 2, 3, 4
MASK_PIECE = '[MASK]'


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


def train(sentences, out_path: str, vocab_size: int = 8000,
          character_coverage: float = 0.9995, max_sentences: int = 10_000_000) -> str:
  """Trains on an iterator of sentences; writes out_path (a .model file)."""
  if not out_path.endswith('.model'):
    raise ValueError(f'--out must end with .model, got {out_path!r}')
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  with open(out_path, 'wb') as f:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=f,
        model_type='unigram',
        vocab_size=vocab_size,
        # A small corpus (mini) cannot fill a large vocabulary: allow fewer pieces.
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=character_coverage,
        normalization_rule_name='nmt_nfkc',
        split_digits=True,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        user_defined_symbols=[MASK_PIECE],
        # Bounded memory on the full release: a uniform sample of sentences.
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
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
  parser.add_argument('--out', default=None, help='PATH.model (default: beside the data)')
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--character_coverage', type=float, default=0.9995)
  parser.add_argument('--annotations', default=release.ReleaseLayout.annotations,
                      help='annotations file name inside the release')
  args = parser.parse_args(argv)
  layout = release.ReleaseLayout(annotations=args.annotations)
  out = args.out or os.path.join(args.manual_dir, f'spm_{args.vocab_size}.model')
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

  start = time.time()
  train(counting(iter_training_text(args.manual_dir, layout, skipped)), out,
        args.vocab_size, args.character_coverage)
  sp = load(out)
  print(f'tokenizer: {out} ({sp.get_piece_size()} pieces) from {counted["sentences"]:,} sentences '
        f'in {time.time() - start:.1f}s; skipped {dict(skipped) or 0}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
