"""One release item -> one TFDS example, with counted reasons for what is absent.

Kept apart from the builder so Beam workers import only this (and the readers),
and so both generation paths (plain and Beam) share exactly the same code.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from typing import Mapping

from data_prep import decode
from data_prep import modalities
from data_prep import release
from data_prep.m5product import token_ids


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
  """Everything a worker needs to turn (item_id, record) into an example."""
  root: str
  form: str  # 'raw' | 'features'
  layout: release.ReleaseLayout
  image_size: int = 224
  video_size: int = 112
  max_video_frames: int = 12
  video_fps: float = 1.0
  bounds: decode.Bounds = decode.Bounds()
  tokenizer: bytes | None = None  # sentencepiece model: store token ids (token_ids.py)
  # Modules of the modalities stored beyond the built-in ones (data_prep/modalities).
  extra_modalities: tuple[str, ...] = ()


# ---------------------------------------------------------------- counting

class Tally:
  """Counts by name ('<split>/absent/<modality>/<reason>', ...). Plain path."""

  def __init__(self):
    self.counts = collections.Counter()

  def inc(self, name: str, n: int = 1) -> None:
    self.counts[name] += n


class BeamTally:
  """The same interface on Beam metrics (valid inside a running DoFn)."""
  NAMESPACE = 'm5product'

  def inc(self, name: str, n: int = 1) -> None:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    beam.metrics.Metrics.counter(self.NAMESPACE, name).inc(n)


def summarize(counts: Mapping[str, int], splits,
              modality_names: tuple[str, ...] = release.MODALITIES) -> dict:
  """Flat counter names -> the build report (per split and totals)."""
  def empty():
    return {'items_in': 0, 'items_written': 0, 'rejected': {},
            'absent': {m: {} for m in modality_names}}

  report = {s: empty() for s in splits}
  for name, n in sorted(counts.items()):
    split, kind, *rest = name.split('/')
    entry = report.setdefault(split, empty())
    if kind in ('items_in', 'items_written'):
      entry[kind] += n
    elif kind == 'rejected':
      entry['rejected'][rest[0]] = entry['rejected'].get(rest[0], 0) + n
    elif kind == 'absent':
      bucket = entry['absent'].setdefault(rest[0], {})
      bucket[rest[1]] = bucket.get(rest[1], 0) + n
  total = empty()
  for entry in report.values():
    total['items_in'] += entry['items_in']
    total['items_written'] += entry['items_written']
    for r, n in entry['rejected'].items():
      total['rejected'][r] = total['rejected'].get(r, 0) + n
    for m, reasons in entry['absent'].items():
      for r, n in reasons.items():
        total['absent'][m][r] = total['absent'][m].get(r, 0) + n
  return {'splits': report, 'total': total}


def format_report(report: dict) -> str:
  t = report['total']
  rejected = sum(t['rejected'].values())
  lines = [f"m5product build: items in {t['items_in']}, written {t['items_written']}, "
           f"rejected {rejected} {t['rejected'] or ''}".rstrip()]
  for m, reasons in t['absent'].items():
    if reasons:
      lines.append(f'  absent {m}: ' + ', '.join(f'{r}={n}' for r, n in sorted(reasons.items())))
  skipped = report.get('skipped_splits', {})
  for s, e in report['splits'].items():
    lines.append(f"  split {s}: in {e['items_in']}, written {e['items_written']}, "
                 f"rejected {sum(e['rejected'].values())}"
                 + (f' (SKIPPED: {skipped[s]})' if s in skipped else ''))
  if report.get('lost_by_writer'):
    lines.append('  LOST by the writer (converted, not stored): '
                 + ', '.join(f'{s} {n}' for s, n in report['lost_by_writer'].items()))
  if report.get('unlisted_records'):
    lines.append(f"  annotation records in no split list: {report['unlisted_records']}")
  return '\n'.join(lines)


# ---------------------------------------------------------------- labels and ids

INT64_MAX = (1 << 63) - 1


def hash_id(text: str) -> int:
  """A stable, non-negative 62-bit id for a text id (SHA-256, first 8 bytes >> 2)."""
  return int.from_bytes(hashlib.sha256(text.encode('utf-8', 'surrogateescape')).digest()[:8],
                        'big') >> 2


def _digits_to_id(text: str) -> int:
  """A non-negative ASCII digit string -> its value if it fits int64, else its hash.

  Release ids are 12-digit numbers today; one past int64 must not stop a 6M-item
  build (TFDS's int64 encoder raises OverflowError), so it is keyed like a text id.
  """
  if len(text.lstrip('0')) <= 19 and int(text) <= INT64_MAX:
    return int(text)
  return hash_id(text)


def label_of(value, vocabulary: Mapping[str, int]) -> tuple[int, str]:
  """The release's label -> (int64 label, label_name). -1 when unknown.

  Ints and digit strings keep their value (hashed when outside int64); other
  strings index the vocabulary of non-numeric labels.
  """
  if isinstance(value, bool) or value is None:
    return -1, ''
  if isinstance(value, int):
    if -INT64_MAX - 1 <= value <= INT64_MAX:
      return value, str(value)
    text = str(value)
    return hash_id(text), text
  if isinstance(value, str):
    text = value.strip()
    if text.isascii() and text.isdigit():
      return _digits_to_id(text), text
    return vocabulary.get(text, -1), text
  return -1, ''


def string_label(value) -> str | None:
  """The label text that needs a vocabulary entry (non-numeric strings), else None."""
  if isinstance(value, str):
    text = value.strip()
    if text and not (text.isascii() and text.isdigit()):
      return text
  return None


def instance_of(instance_id: str | None) -> int:
  """Instance id -> int64 >= 0: itself if a number that fits int64, else a stable
  62-bit hash (text ids, '-5', over-long numbers); -1 unknown.

  Never negative when known: evaluation treats a negative key as unknown.
  """
  if not instance_id or not instance_id.strip():
    return -1
  text = instance_id.strip()
  if text.isascii() and text.isdigit():
    return _digits_to_id(text)
  return hash_id(text)


# ---------------------------------------------------------------- fields

def _text_field(record: Mapping, key: str) -> str:
  value = record.get(key)
  if value is None or (isinstance(value, str) and not value.strip()):
    raise decode.Absent('missing_field', key)
  if not isinstance(value, str):
    raise decode.Absent('malformed_field', f'{key} is {type(value).__name__}')
  if release.has_bad_encoding(value):
    raise decode.Absent('bad_encoding', key)
  return value.strip()


def title_of(record: Mapping) -> str:
  return _text_field(record, 'title')


def table_of(record: Mapping) -> list[tuple[str, str]]:
  pv = _text_field(record, 'pv')
  try:
    pairs = release.parse_pv(pv)
  except release.MalformedPV as e:
    raise decode.Absent('malformed_field', str(e)) from None
  if not pairs:
    raise decode.Absent('missing_field', 'pv has no pairs')
  return pairs


# ---------------------------------------------------------------- the example

def convert(split: str, item_id: str, record: Mapping, label_vocab: Mapping[str, int],
            instance_id: str | None, options: ConvertOptions, tally) -> tuple[str, dict]:
  """(item_id, annotation record) -> (key, example). Never raises for bad data.

  Each absent modality increments '<split>/absent/<modality>/<reason>'.
  """
  label, label_name = label_of(record.get('label'), label_vocab)
  example = {'item_id': item_id, 'label': label, 'label_name': label_name,
             'instance': instance_of(instance_id), 'present': {},
             'title': '', 'pv_keys': [], 'pv_values': []}

  def attempt(modality, fn):
    try:
      values = fn()
      example['present'][modality] = True
      return values
    except (decode.Absent, release.UnsafePathError) as e:
      reason = getattr(e, 'reason', 'unsafe_path')  # a link out of its folder: this file only
      example['present'][modality] = False
      tally.inc(f'{split}/absent/{modality}/{reason}')
      return None

  title = attempt('text', lambda: title_of(record))
  if title is not None:
    example['title'] = title
  pairs = attempt('table', lambda: table_of(record))
  if pairs is not None:
    example['pv_keys'] = [k for k, _ in pairs]
    example['pv_values'] = [v for _, v in pairs]
  example.update(token_ids.encode(options.tokenizer, example['title'], pairs or ()))
  for side in modalities.of_build(options.extra_modalities):
    values = attempt(side.name, functools.partial(side.read, item_id, record, options))
    example.update(values if values is not None else side.absent(options))
  tally.inc(f'{split}/items_written')
  return item_id, example
