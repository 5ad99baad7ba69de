"""The M5Product release layout, and safe, streaming readers for it.

This is the single contract between the M5Product-mini generator
(data_prep/make_mini.py) and the TFDS builder (data_prep/m5product/). File names
differ between release versions, so every name is a field of `ReleaseLayout`
(builder options with these defaults; see the dataset card).

  <root>/product5m_id_label.json   {item_id: {"title", "pv", "label", "url"}}; one
                                   JSON object, ~5.8 GB for the full set: read with
                                   `iter_annotations` (streaming), never json.load.
  <root>/images/{id}.jpg           main product image
  <root>/videos/{id}.mp4           24 fps product video
  <root>/audios/{id}.mp3           audio extracted from the video
  <root>/splits/pretrain.txt       one item_id per line (all id lists)
  <root>/splits/coarse_query.txt, coarse_gallery.txt
  <root>/splits/fine_query.txt, fine_gallery.txt
  <root>/splits/fine_instances.tsv item_id <TAB> instance_id (the positives of
                                   fine-grained retrieval are the same instance)
  <root>/splits/cls_train.txt, cls_test.txt   classification / clustering
  <root>/features/image_regions/{id}.npy  float16 [36, 2048] Faster R-CNN regions
  <root>/features/image_boxes/{id}.npy    float32 [36, 5]   boxes (x1, y1, x2, y2, area), normalised
  <root>/features/video_s3d/{id}.npy      float16 [12, 1024] S3D, 1 per second
  <root>/features/audio_mel/{id}.npy      float16 [80, 751]  log-mel (bins x frames)

The `pv` table: pairs separated by '#;#', key from value by '#:#'.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterator

MODALITIES = ('text', 'table', 'image', 'video', 'audio')

# Why a modality is absent for an item (counted by the builder, injected by the
# generator's defect manifest). Keep this list the one vocabulary of reasons.
ABSENT_REASONS = (
    'missing_field',    # empty / missing title or pv in the annotations
    'malformed_field',  # pv that does not parse, wrong type
    'bad_encoding',     # non-UTF-8 bytes in a text field
    'missing_file',     # media or feature file does not exist
    'empty_file',       # zero-byte file
    'corrupt_file',     # truncated / undecodable / not what its extension says
    'too_large',        # over the decode bounds (pixels, frames, seconds)
    'bad_features',     # NaN/inf or wrong shape in a feature .npy
    'unsafe_path',      # the media/feature file is a link resolving outside its folder
)
# Why a whole item is rejected (not written), also counted.
REJECT_REASONS = (
    'unsafe_id',        # id that would reach outside the release folder
    'duplicate_id',     # second occurrence of an id in the annotations
    'unknown_id',       # split lists an id that the annotations do not have
    'malformed_record', # annotation value is not an object
)

SPLIT_FILES = {
    'pretrain': 'pretrain.txt',
    'coarse_query': 'coarse_query.txt',
    'coarse_gallery': 'coarse_gallery.txt',
    'fine_query': 'fine_query.txt',
    'fine_gallery': 'fine_gallery.txt',
    'cls_train': 'cls_train.txt',
    'cls_test': 'cls_test.txt',
}


@dataclasses.dataclass(frozen=True)
class ReleaseLayout:
  """Relative file names of a release. Override per release version."""
  annotations: str = 'product5m_id_label.json'
  image_dir: str = 'images'
  image_ext: str = '.jpg'
  video_dir: str = 'videos'
  video_ext: str = '.mp4'
  audio_dir: str = 'audios'
  audio_ext: str = '.mp3'
  split_dir: str = 'splits'
  instances: str = 'splits/fine_instances.tsv'
  feature_dirs: tuple[tuple[str, str], ...] = (
      ('image_regions', 'features/image_regions'),
      ('image_boxes', 'features/image_boxes'),
      ('video_s3d', 'features/video_s3d'),
      ('audio_mel', 'features/audio_mel'),
  )

  def split_path(self, root: str, split: str) -> str:
    return os.path.join(root, self.split_dir, SPLIT_FILES[split])

  def media_path(self, root: str, modality: str, item_id: str) -> str:
    subdir, ext = {
        'image': (self.image_dir, self.image_ext),
        'video': (self.video_dir, self.video_ext),
        'audio': (self.audio_dir, self.audio_ext),
    }[modality]
    return safe_path(root, subdir, item_id, ext)

  def feature_path(self, root: str, feature: str, item_id: str) -> str:
    return safe_path(root, dict(self.feature_dirs)[feature], item_id, '.npy')


FEATURE_SHAPES = {
    'image_regions': (36, 2048),
    'image_boxes': (36, 5),
    'video_s3d': (12, 1024),
    'audio_mel': (80, 751),
}

_SAFE_ID = re.compile(r'^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$')


class UnsafeIdError(ValueError):
  """An item id that could reach outside the release folder."""


class UnsafePathError(UnsafeIdError):
  """A safe id whose file is a link resolving outside its folder (absolute, '../',
  dangling): the builder marks that modality absent ('unsafe_path'), not the item."""


def check_id(item_id: str) -> str:
  """Returns item_id, or raises UnsafeIdError (path separators, '..', odd chars)."""
  if not isinstance(item_id, str) or not _SAFE_ID.match(item_id) or '..' in item_id:
    raise UnsafeIdError(f'unsafe item id {item_id!r}')
  return item_id


def safe_path(root: str, subdir: str, item_id: str, ext: str) -> str:
  """root/subdir/{item_id}{ext}, guaranteed to stay inside root/subdir."""
  check_id(item_id)
  base = os.path.realpath(os.path.join(root, subdir))
  path = os.path.realpath(os.path.join(base, item_id + ext))
  if os.path.dirname(path) != base:
    raise UnsafePathError(f'item id {item_id!r} resolves outside {base}')
  return path


class MalformedPV(ValueError):
  pass


def parse_pv(pv: str) -> list[tuple[str, str]]:
  """'k1#:#v1#;#k2#:#v2' -> [(k1, v1), (k2, v2)]. Raises MalformedPV.

  Empty pairs (a trailing '#;#') are skipped; a pair without exactly one '#:#'
  or with an empty key is malformed.
  """
  if not isinstance(pv, str):
    raise MalformedPV(f'pv is {type(pv).__name__}, not a string')
  pairs = []
  for chunk in pv.split('#;#'):
    if not chunk.strip():
      continue
    parts = chunk.split('#:#')
    if len(parts) != 2 or not parts[0].strip():
      raise MalformedPV(f'bad pv pair {chunk[:40]!r}')
    pairs.append((parts[0].strip(), parts[1].strip()))
  return pairs


def format_pv(pairs) -> str:
  return '#;#'.join(f'{k}#:#{v}' for k, v in pairs)


def has_bad_encoding(text: str) -> bool:
  """True if `text` came from non-UTF-8 bytes (decoded with surrogateescape)."""
  return any('\udc80' <= ch <= '\udcff' for ch in text)


class AnnotationsError(ValueError):
  pass


def iter_annotations(path: str, chunk_chars: int = 1 << 20,
                     max_record_chars: int = 64 << 20) -> Iterator[tuple[str, object]]:
  """Streams (item_id, record) from one top-level JSON object, in file order.

  Memory stays O(chunk + largest record) however big the file. Invalid UTF-8
  bytes are kept as lone surrogates (see has_bad_encoding) so one bad title does
  not stop a 6M-item build; the builder counts it. Duplicate ids are yielded
  again (the caller counts and rejects them). Raises AnnotationsError with the
  character offset when the JSON itself is broken.
  """
  decoder = json.JSONDecoder(parse_int=_json_int)
  with open(path, 'r', encoding='utf-8', errors='surrogateescape') as f:
    buf = ''
    pos = 0
    offset = 0  # characters consumed before buf[0]
    eof = False

    def fill():
      nonlocal buf, pos, offset, eof
      chunk = f.read(chunk_chars)
      if not chunk:
        eof = True
      offset += pos
      buf = buf[pos:] + chunk
      pos = 0

    def skip_ws():
      nonlocal pos
      while True:
        while pos < len(buf) and buf[pos] in ' \t\r\n':
          pos += 1
        if pos < len(buf) or eof:
          return
        fill()

    def expect(chars: str) -> str:
      skip_ws()
      if pos >= len(buf) or buf[pos] not in chars:
        got = buf[pos] if pos < len(buf) else 'end of file'
        raise AnnotationsError(f'{path}: expected one of {chars!r} at char {offset + pos}, got {got!r}')
      return buf[pos]

    def decode():
      nonlocal pos
      while True:
        skip_ws()
        try:
          value, end = decoder.raw_decode(buf, pos)
          # A value ending exactly at the buffer end may be cut (e.g. a number).
          if end < len(buf) or eof:
            pos = end
            return value
        except json.JSONDecodeError as e:
          if eof or len(buf) - pos > max_record_chars:
            raise AnnotationsError(f'{path}: bad JSON at char {offset + e.pos}: {e.msg}') from None
        fill()

    fill()
    expect('{')
    pos += 1
    if expect('}"') == '}':
      return
    while True:
      key = decode()
      expect(':')
      pos += 1
      value = decode()
      yield key, value
      if expect(',}') == '}':
        return
      pos += 1


def _json_int(text: str):
  """A JSON integer; one too long for Python's int parser (4300 digits) stays its
  digit string (the builder hashes an over-long label like a string id)."""
  return int(text) if len(text) <= 4000 else text


def _lines(path: str) -> Iterator[str]:
  """Stripped lines; a UTF-8 byte-order mark (Windows editors write one, also in
  the middle of concatenated lists) is not part of an id."""
  with open(path, encoding='utf-8-sig', errors='surrogateescape') as f:
    for line in f:
      yield line.replace('\ufeff', '').strip()


def read_id_list(path: str) -> list[str]:
  """One id per line; blank lines and '#' comments skipped; order kept."""
  return [s for s in _lines(path) if s and not s.startswith('#')]


def read_instances(path: str) -> dict[str, str]:
  """item_id -> instance_id from a two-column TSV."""
  out = {}
  for n, line in enumerate(_lines(path), 1):
    if not line:
      continue
    parts = line.split('\t')
    if len(parts) != 2:
      raise ValueError(f'{path}:{n}: expected "item_id<TAB>instance_id", got {line[:60]!r}')
    out[parts[0]] = parts[1]
  return out
