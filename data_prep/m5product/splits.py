"""Which annotation records go to which split: ONE streaming pass for all splits.

The annotations JSON is the build's one big serial input (about 5.8 GB for
6.3M items), so the planning process parses it once and, in that pass:
  * counts every listing's fate per split: items_in, and rejected by reason
    (unsafe / duplicate / unknown ids, records that are not objects), so that
    items_in = items_written + rejected, exactly;
  * collects what must be known before any example is written: the label
    vocabulary (over every record) and the records listed in no split;
  * writes each split's accepted (item_id, record) pairs, in file order, to one
    JSON-lines file per split (a split with no line writes no example).
Both generation paths then read those files: the plain path streams one per
split; the Beam path reads a split's file on one worker (cheap: JSON lines),
reshuffles, and decodes media on every worker. Records travel as ASCII JSON: it keeps lone surrogates
(bad bytes, counted later as bad_encoding) that Beam's string coder refuses.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator, Mapping

from data_prep import release
from data_prep.m5product import examples


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """One split's id list, checked."""
  name: str
  ids: frozenset            # safe ids listed for the split
  listed_unsafe: int        # listed ids rejected as unsafe
  listed_duplicates: int    # repeated lines in the id list


def plan_split(split: str, listed: list[str]) -> SplitPlan:
  ids, unsafe, duplicates = set(), 0, 0
  for item_id in listed:
    try:
      release.check_id(item_id)
    except release.UnsafeIdError:
      unsafe += 1
      continue
    if item_id in ids:
      duplicates += 1
    ids.add(item_id)
  return SplitPlan(split, frozenset(ids), unsafe, duplicates)


@dataclasses.dataclass(frozen=True)
class Routed:
  """What the one pass found."""
  label_vocab: dict[str, int]   # non-numeric label -> index in their sorted set
  record_files: dict[str, str]  # split -> its JSON-lines file; only splits with >= 1 record
  unlisted: int                 # annotation records (duplicates included) in no split


def route_annotations(annotations: str, plans: Mapping[str, SplitPlan], out_dir: str,
                      tally) -> Routed:
  """Streams the annotations once, counting into `tally` and writing one
  records file per split under out_dir (see the module docstring)."""
  from etils import epath  # pylint: disable=g-import-not-at-top  (local or gs:// data_dir)
  # item_id -> (met in the annotations yet, the splits that list it). The values
  # are interned (a few distinct tuples, not one per id) and the flag lives in
  # them rather than in a set of met ids (measured with 1M listed ids: +30 MB
  # over the plans' 0.2 GB, where a set of met ids added 140 MB).
  entry_of: dict[str, tuple[bool, tuple[str, ...]]] = {}
  interned: dict[tuple, tuple] = {}
  for name, plan in plans.items():
    for reason, n in (('unsafe_id', plan.listed_unsafe), ('duplicate_id', plan.listed_duplicates)):
      if n:
        tally.inc(f'{name}/items_in', n)
        tally.inc(f'{name}/rejected/{reason}', n)
    for item_id in plan.ids:
      entry = (False, entry_of.get(item_id, (False, ()))[1] + (name,))
      entry_of[item_id] = interned.setdefault(entry, entry)
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  files, paths = {}, {}
  found = dict.fromkeys(plans, 0)  # distinct listed ids met, per split
  names, unlisted = set(), 0
  try:
    for item_id, record in release.iter_annotations(annotations):
      if isinstance(record, dict) and (name := examples.string_label(record.get('label'))):
        names.add(name)
      entry = entry_of.get(item_id)
      if entry is None:
        unlisted += 1
        continue
      met, splits = entry
      for split in splits:
        tally.inc(f'{split}/items_in')
      if met:
        for split in splits:
          tally.inc(f'{split}/rejected/duplicate_id')
        continue
      entry = (True, splits)
      entry_of[item_id] = interned.setdefault(entry, entry)
      for split in splits:
        found[split] += 1
      if not isinstance(record, dict):
        for split in splits:
          tally.inc(f'{split}/rejected/malformed_record')
        continue
      line = json.dumps([item_id, record], ensure_ascii=True) + '\n'
      for split in splits:
        if split not in files:
          paths[split] = os.fspath(out / f'{split}.jsonl')
          files[split] = epath.Path(paths[split]).open('w')
        files[split].write(line)
  finally:
    for f in files.values():
      f.close()
  for name, plan in plans.items():
    unknown = len(plan.ids) - found[name]
    if unknown:
      tally.inc(f'{name}/items_in', unknown)
      tally.inc(f'{name}/rejected/unknown_id', unknown)
  vocab = {name: i for i, name in enumerate(sorted(names))}
  return Routed(label_vocab=vocab, record_files=paths, unlisted=unlisted)


def parse_line(line: str) -> tuple[str, dict]:
  """One records-file line -> (item_id, record)."""
  item_id, record = json.loads(line)
  return item_id, record


def iter_lines(path: str) -> Iterator[str]:
  """A split's records file, line by line (ASCII: safe for Beam's string coder)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  with epath.Path(path).open() as f:
    yield from f


def iter_records(path: str) -> Iterator[tuple[str, dict]]:
  """A split's records file -> (item_id, record), in annotations order."""
  for line in iter_lines(path):
    yield parse_line(line)
