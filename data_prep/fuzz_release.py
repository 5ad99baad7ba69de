r"""Corrupts a copy of M5Product-mini on purpose, and says exactly what a build must report.

    python -m data_prep.fuzz_release --release MINI --out FUZZED --faults 200 --seed 0

MINI is a `data_prep.make_mini --features` release (its mini_manifest.json says
which modalities are already absent, so faults go to healthy slots only). The
copy is made with hard links where possible; a file that a fault changes is
unlinked first, never written through (MINI is never modified).

Faults (--faults N, dealt round-robin over the kinds in a seeded order; each
fault hits one healthy (item, slot), or adds one listing):

  kind                 where                                  build must report
  truncated_jpeg       images/{id}.jpg cut short              absent image corrupt_file
  zero_byte_file       any media or feature file emptied      absent empty_file
  content_mismatch     another medium's bytes in a file       absent corrupt_file
                       (video in .jpg, JPEG in .mp4/.mp3/.npy)
  decompression_bomb   JPEG header claiming 60000x60000;      image too_large;
                       .npy header claiming 1000x the rows    features bad_features
  non_utf8_value       raw 0xFF 0xFE bytes in title / a pv    absent text|table bad_encoding
  malformed_pv         pair without '#:#', empty key, or pv   absent table malformed_field
                       not a string
  wrong_type_title     title is a number or a list            absent text malformed_field
  nonfinite_features   NaN or inf in a feature .npy           absent bad_features
  wrong_feature_shape  a feature .npy of another shape        absent bad_features
  truncated_npy        .npy data shorter than its header      absent corrupt_file
  deleted_file         media or feature file removed          absent missing_file
  duplicate_id         the id again in the annotations, or    rejected duplicate_id
                       twice in a split list
  unsafe_id            listed id with '/', '\' or '..'        rejected unsafe_id
  unknown_split_id     listed id the annotations lack         rejected unknown_id
  malformed_record     listed id whose record is not an       rejected malformed_record
                       object

A raw file fault is seen by the `raw` config only, a feature file fault by
`features` only, an annotation or split fault by both. When the release has no
healthy slot left for a fault, a complete item is cloned under a new id (into
pretrain) and the fault goes there.

FUZZED/fuzz_manifest.json lists every fault (kind, item, split, target, what
each config must report) and the expected build report of each config: per
split items_in, items_written, rejected by reason and absent by modality and
reason, plus every expected absent (item, modality, reason).
`data_prep.fuzz_reconcile` compares a finished build with it and returns the
figures: faults injected, faults survived (seen exactly as expected), items
lost (listed, but neither written nor counted as rejected; must be 0).
--check DATA_DIR builds both configs after fuzzing and reconciles them.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import shutil
import struct
import sys

import numpy as np

from data_prep import fuzz_reconcile
from data_prep import release

CONFIGS = ('raw', 'features')
CLONE_ID_BASE = 900_000_000_000
UNKNOWN_ID_BASE = 800_000_000_000

FILE_SLOTS = ('raw/image', 'raw/video', 'raw/audio',
              'features/image', 'features/video', 'features/audio')
RECORD_SLOTS = ('record/text', 'record/table')
FEATURES_OF = {'image': ('image_regions', 'image_boxes'), 'video': ('video_s3d',),
               'audio': ('audio_mel',)}
VARIABLE_AXIS = {'image_regions': None, 'image_boxes': None, 'video_s3d': 0, 'audio_mel': 1}

# kind -> the slots it can hit ('id' kinds add listings instead).
SLOT_KINDS = {
    'truncated_jpeg': ('raw/image',),
    'zero_byte_file': FILE_SLOTS,
    'content_mismatch': FILE_SLOTS,
    'decompression_bomb': ('raw/image', 'features/image', 'features/video', 'features/audio'),
    'non_utf8_value': RECORD_SLOTS,
    'malformed_pv': ('record/table',),
    'wrong_type_title': ('record/text',),
    'nonfinite_features': FILE_SLOTS[3:],
    'wrong_feature_shape': FILE_SLOTS[3:],
    'truncated_npy': FILE_SLOTS[3:],
    'deleted_file': FILE_SLOTS,
}
ID_KINDS = ('duplicate_id', 'unsafe_id', 'unknown_split_id', 'malformed_record')
KINDS = tuple(SLOT_KINDS) + ID_KINDS
ABSENT_REASON = {
    'truncated_jpeg': 'corrupt_file', 'zero_byte_file': 'empty_file',
    'content_mismatch': 'corrupt_file', 'non_utf8_value': 'bad_encoding',
    'malformed_pv': 'malformed_field', 'wrong_type_title': 'malformed_field',
    'nonfinite_features': 'bad_features', 'wrong_feature_shape': 'bad_features',
    'truncated_npy': 'corrupt_file', 'deleted_file': 'missing_file',
}
BAD_BYTES = '\udcff\udcfe'  # lone surrogates: written as the raw bytes FF FE (not UTF-8)


def absent_reason(kind: str, slot: str) -> str:
  if kind == 'decompression_bomb':
    return 'too_large' if slot == 'raw/image' else 'bad_features'
  return ABSENT_REASON[kind]


# ----------------------------------------------------------------------------- the release copy


class Release:
  """A writable copy of a mini release: annotations and split lists in memory,
  files on disk (hard links until changed)."""

  def __init__(self, source: str, out: str):
    if os.path.exists(out):
      raise FileExistsError(f'--out {out} exists; give a new folder')
    with open(os.path.join(source, 'mini_manifest.json'), encoding='utf-8') as f:
      self.base_manifest = json.load(f)
    if self.base_manifest.get('absent_features') is None:
      raise ValueError(f'{source} has no features; make it with make_mini --features')
    try:
      shutil.copytree(source, out, copy_function=os.link)
    except (OSError, shutil.Error):  # another filesystem: real copies
      shutil.rmtree(out, ignore_errors=True)
      shutil.copytree(source, out)
    self.source, self.root, self.layout = source, out, release.ReleaseLayout()
    self.records = list(release.iter_annotations(os.path.join(out, self.layout.annotations)))
    self.original = {item_id: copy.deepcopy(r) for item_id, r in self.records}
    self.record_index = {item_id: k for k, (item_id, _) in enumerate(self.records)}
    self.splits = {s: release.read_id_list(self.layout.split_path(out, s))
                   for s in release.SPLIT_FILES
                   if os.path.isfile(self.layout.split_path(out, s))}

  def record(self, item_id: str) -> dict:
    return self.records[self.record_index[item_id]][1]

  def path(self, slot: str, item_id: str, feature: str | None = None, root: str = '') -> str:
    scope, modality = slot.split('/')
    if scope == 'raw':
      return self.layout.media_path(root or self.root, modality, item_id)
    return self.layout.feature_path(root or self.root, feature or FEATURES_OF[modality][0],
                                    item_id)

  def replace(self, path: str, data: bytes) -> None:
    if os.path.exists(path):
      os.unlink(path)  # break the hard link: never write through to the source
    with open(path, 'wb') as f:
      f.write(data)

  def read(self, path: str) -> bytes:
    with open(path, 'rb') as f:
      return f.read()

  def write(self) -> None:
    """Annotations as one JSON object (bad bytes kept as bytes) and the split lists."""
    path = os.path.join(self.root, self.layout.annotations)
    entries = [json.dumps(i, ensure_ascii=False) + ': ' + json.dumps(r, ensure_ascii=False)
               for i, r in self.records]
    self.replace(path, ('{' + ',\n'.join(entries) + '}\n').encode('utf-8', 'surrogateescape'))
    for split, ids in self.splits.items():
      self.replace(self.layout.split_path(self.root, split),
                   ''.join(f'{i}\n' for i in ids).encode('utf-8', 'surrogateescape'))


# ----------------------------------------------------------------------------- file faults


def _npy_bytes(array: np.ndarray) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=False)
  return buf.getvalue()


def _npy_header_only(shape, dtype) -> bytes:
  """A .npy header claiming `shape`, with no data after it."""
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.lib.format.write_array_header_2_0(
      buf, {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)), 'fortran_order': False,
            'shape': tuple(shape)})
  return buf.getvalue()


def _jpeg_bomb(jpeg: bytes, size: int = 60000) -> bytes:
  """The JPEG with its frame header (SOF) claiming size x size pixels."""
  pos = 2
  while pos + 4 <= len(jpeg):
    if jpeg[pos] != 0xFF:
      raise ValueError('not a baseline JPEG stream')
    marker, length = jpeg[pos + 1], struct.unpack('>H', jpeg[pos + 2:pos + 4])[0]
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
      return jpeg[:pos + 5] + struct.pack('>HH', size, size) + jpeg[pos + 9:]
    pos += 2 + length
  raise ValueError('no SOF marker')


class Donors:
  """Healthy sample bytes of each medium (for content_mismatch)."""

  def __init__(self, rel: Release, item_id: str):
    self.jpeg = rel.read(rel.path('raw/image', item_id, root=rel.source))
    self.mp4 = rel.read(rel.path('raw/video', item_id, root=rel.source))


def corrupt_file(rel: Release, kind: str, slot: str, item_id: str, donors: Donors,
                 rng: np.random.Generator) -> tuple[str, str]:
  """Applies a file fault; returns (target path relative to the release, variant)."""
  modality = slot.split('/')[1]
  feature = None
  if slot.startswith('features/'):
    feature = FEATURES_OF[modality][int(rng.integers(len(FEATURES_OF[modality])))]
  path = rel.path(slot, item_id, feature)
  rel_path = os.path.relpath(path, rel.root)
  variant = ''
  if kind == 'deleted_file':
    os.unlink(path)
  elif kind == 'zero_byte_file':
    rel.replace(path, b'')
  elif kind == 'truncated_jpeg':
    data = rel.read(path)
    cut = int(len(data) * rng.uniform(0.3, 0.7))
    rel.replace(path, data[:cut])
    variant = f'{cut} of {len(data)} bytes'
  elif kind == 'content_mismatch':
    data, variant = {'raw/image': (donors.mp4, 'mp4 video')}.get(slot, (donors.jpeg, 'JPEG image'))
    rel.replace(path, data)
  elif kind == 'decompression_bomb':
    if slot == 'raw/image':
      rel.replace(path, _jpeg_bomb(rel.read(path)))
      variant = 'JPEG SOF 60000x60000'
    else:
      shape = list(release.FEATURE_SHAPES[feature])
      shape[0] *= 1000
      rel.replace(path, _npy_header_only(shape, np.float16))
      variant = f'.npy header {tuple(shape)}, no data'
  else:
    array = np.load(path, allow_pickle=False)
    if kind == 'nonfinite_features':
      value = (np.nan, np.inf, -np.inf)[int(rng.integers(3))]
      flat = array.reshape(-1).copy()
      flat[int(rng.integers(flat.size))] = value
      rel.replace(path, _npy_bytes(flat.reshape(array.shape)))
      variant = str(value)
    elif kind == 'wrong_feature_shape':
      shape = list(array.shape)
      axis = 1 if VARIABLE_AXIS[feature] == 0 else 0   # never the variable axis
      shape[axis] += int(rng.choice([-3, 1, 5]))
      rel.replace(path, _npy_bytes(np.resize(array, shape)))
      variant = f'{tuple(array.shape)} -> {tuple(shape)}'
    elif kind == 'truncated_npy':
      data = rel.read(path)
      rel.replace(path, data[:len(data) - int(rng.integers(1, len(data) // 2))])
    else:
      raise ValueError(kind)
  return rel_path, variant


def corrupt_record(rel: Release, kind: str, slot: str, item_id: str,
                   rng: np.random.Generator) -> tuple[str, str]:
  record = rel.record(item_id)
  field = 'title' if slot == 'record/text' else 'pv'
  if kind == 'non_utf8_value':
    if field == 'title':
      record['title'] = record['title'] + BAD_BYTES
    else:
      record['pv'] = record['pv'] + '#;#颜色#:#' + BAD_BYTES
    return field, 'bytes FF FE'
  if kind == 'wrong_type_title':
    record['title'] = [12345, record['title']][:int(rng.integers(1, 3))] if rng.random() < 0.5 \
        else 12345
    return field, type(record['title']).__name__
  if kind == 'malformed_pv':
    variant = ('no_separator', 'empty_key', 'not_a_string')[int(rng.integers(3))]
    if variant == 'no_separator':
      record['pv'] = record['pv'].replace('#:#', ':', 1)
    elif variant == 'empty_key':
      record['pv'] = record['pv'] + '#;# #:#value'
    else:
      record['pv'] = {'pv': record['pv']}
    return field, variant
  raise ValueError(kind)


# ----------------------------------------------------------------------------- the plan


class Fuzzer:
  """Deals the faults and keeps the expected outcome of every listing."""

  def __init__(self, rel: Release, rng: np.random.Generator):
    self.rel, self.rng = rel, rng
    manifest = rel.base_manifest
    self.split_of = {i: s for s, ids in rel.splits.items() for i in ids}
    # Expected outcome per config: written listings {(split, id): {modality: reason}}.
    self.absent = {c: collections.defaultdict(dict) for c in CONFIGS}
    for config in CONFIGS:
      for item_id, modality, reason in manifest[f'absent_{config}']:
        self.absent[config][item_id][modality] = reason
    self.rejected = {c: collections.Counter() for c in CONFIGS}  # (split, reason)
    self.extra_in = collections.Counter()                        # split -> extra listings
    self.free = {slot: [] for slot in FILE_SLOTS + RECORD_SLOTS}
    for item_id in rng.permutation(sorted(self.split_of)).tolist():
      self._add_free_slots(item_id)
    self.complete = [i for i in sorted(self.split_of)
                     if not any(self.absent[c].get(i) for c in CONFIGS)]
    if not self.complete:
      raise ValueError('the release has no complete item to clone')
    self.donors = Donors(rel, self.complete[0])
    self.duplicated = set()
    self.faults, self.clones = [], []

  def _add_free_slots(self, item_id: str) -> None:
    for slot in self.free:
      scope, modality = slot.split('/')
      configs = CONFIGS if scope == 'record' else (scope,)
      if all(modality not in self.absent[c].get(item_id, {}) for c in configs):
        self.free[slot].append(item_id)

  def _clone(self) -> str:
    """A new pretrain listing: a copy of a complete item's original record and files."""
    source = self.complete[int(self.rng.integers(len(self.complete)))]
    new_id = str(CLONE_ID_BASE + len(self.clones))
    rel = self.rel
    rel.records.append((new_id, copy.deepcopy(rel.original[source])))
    rel.record_index[new_id] = len(rel.records) - 1
    for slot in FILE_SLOTS[:3]:
      shutil.copyfile(rel.path(slot, source, root=rel.source), rel.path(slot, new_id))
    for feature, _ in rel.layout.feature_dirs:
      shutil.copyfile(rel.layout.feature_path(rel.source, feature, source),
                      rel.layout.feature_path(rel.root, feature, new_id))
    rel.splits['pretrain'].append(new_id)
    self.split_of[new_id] = 'pretrain'
    self.clones.append([new_id, source])
    self._add_free_slots(new_id)
    return new_id

  def _take(self, slots) -> tuple[str, str]:
    """(slot, item) for a fault that may hit `slots`; clones when all are used."""
    open_slots = [s for s in slots if self.free[s]]
    if not open_slots:
      self._clone()
      open_slots = list(slots)
    slot = open_slots[int(self.rng.integers(len(open_slots)))]
    return slot, self.free[slot].pop()

  def slot_fault(self, kind: str) -> dict:
    slot, item_id = self._take(SLOT_KINDS[kind])
    scope, modality = slot.split('/')
    if scope == 'record':
      target, variant = corrupt_record(self.rel, kind, slot, item_id, self.rng)
    else:
      target, variant = corrupt_file(self.rel, kind, slot, item_id, self.donors, self.rng)
    reason = absent_reason(kind, slot)
    effect = {}
    for config in CONFIGS:
      if scope in ('record', config):
        self.absent[config][item_id][modality] = reason
        effect[config] = ['absent', modality, reason]
      else:
        effect[config] = None
    return dict(item_id=item_id, split=self.split_of[item_id], target=target, variant=variant,
                effect=effect)

  def id_fault(self, kind: str) -> dict:
    rel, n = self.rel, len(self.faults)
    split = list(rel.splits)[int(self.rng.integers(len(rel.splits)))]
    variant = ''
    if kind == 'duplicate_id':
      candidates = [i for i in sorted(self.split_of) if i not in self.duplicated]
      item_id = candidates[int(self.rng.integers(len(candidates)))]
      self.duplicated.add(item_id)
      split = self.split_of[item_id]
      if self.rng.random() < 0.5:  # the first record is the one kept
        duplicate = copy.deepcopy(rel.original.get(item_id) or rel.record(item_id))
        duplicate['title'] = 'FUZZ DUPLICATE (must not be written)'
        rel.records.append((item_id, duplicate))
        variant, target = 'annotations', rel.layout.annotations
      else:
        rel.splits[split].append(item_id)
        variant, target = 'split list', rel.layout.split_path('', split).lstrip('/')
      reason = 'duplicate_id'
    elif kind == 'unsafe_id':
      forms = ('../fz{n}', 'fz{n}/../../escape', 'images/../../fz{n}', 'fz{n}\\x', '/tmp/fz{n}',
               '..\\fz{n}', 'a/b{n}', 'fz{n}/')
      item_id = forms[n % len(forms)].format(n=n)
      rel.records.append((item_id, copy.deepcopy(rel.original[self.complete[0]])))
      rel.splits[split].append(item_id)
      reason, target = 'unsafe_id', 'annotations + split list'
    elif kind == 'unknown_split_id':
      item_id = str(UNKNOWN_ID_BASE + n)
      rel.splits[split].append(item_id)
      reason, target = 'unknown_id', rel.layout.split_path('', split).lstrip('/')
    elif kind == 'malformed_record':
      item_id = str(UNKNOWN_ID_BASE + 500_000_000 + n)
      value = (None, 'a string', 42, ['title', 'pv'])[n % 4]
      rel.records.append((item_id, value))
      rel.splits[split].append(item_id)
      reason, target, variant = 'malformed_record', rel.layout.annotations, type(value).__name__
    else:
      raise ValueError(kind)
    self.extra_in[split] += 1
    for config in CONFIGS:
      self.rejected[config][(split, reason)] += 1
    return dict(item_id=item_id, split=split, target=target, variant=variant,
                effect={c: ['rejected', reason] for c in CONFIGS})

  def run(self, num_faults: int) -> None:
    order = [KINDS[k] for k in self.rng.permutation(len(KINDS))]
    for n in range(num_faults):
      kind = order[n % len(order)]
      fault = self.slot_fault(kind) if kind in SLOT_KINDS else self.id_fault(kind)
      self.faults.append(dict(id=n, kind=kind, **fault))

  def expected(self, config: str) -> dict:
    """The build report `config` must produce (per split), and its absent triples."""
    splits = {}
    for split, ids in self.rel.splits.items():
      written = sorted({i for i in ids if self.split_of.get(i) == split})
      absent = {m: collections.Counter() for m in release.MODALITIES}
      for item_id in written:
        for modality, reason in self.absent[config].get(item_id, {}).items():
          absent[modality][reason] += 1
      rejected = {r: n for (s, r), n in sorted(self.rejected[config].items()) if s == split}
      splits[split] = {'items_in': len(written) + self.extra_in[split],
                       'items_written': len(written), 'written': written, 'rejected': rejected,
                       'absent': {m: dict(sorted(c.items())) for m, c in absent.items()}}
    triples = sorted([i, m, r] for i in self.split_of
                     for m, r in self.absent[config].get(i, {}).items())
    return {'splits': splits, 'absent': triples}


def fuzz(source: str, out: str, num_faults: int, seed: int = 0) -> dict:
  """Copies `source` to `out`, injects `num_faults` faults, writes the manifest."""
  rel = Release(source, out)
  fuzzer = Fuzzer(rel, np.random.default_rng([seed, 0xF0]))
  fuzzer.run(num_faults)
  rel.write()
  manifest = {
      'format': 'm5product-fuzz-manifest/1',
      'source': os.path.abspath(source), 'seed': seed,
      'counts': {'faults': len(fuzzer.faults), 'clones': len(fuzzer.clones),
                 'by_kind': dict(collections.Counter(f['kind'] for f in fuzzer.faults))},
      'faults': fuzzer.faults,
      'clones': fuzzer.clones,
      'expected': {c: fuzzer.expected(c) for c in CONFIGS},
  }
  with open(os.path.join(out, fuzz_reconcile.MANIFEST), 'w', encoding='utf-8') as f:
    json.dump(manifest, f, indent=1, ensure_ascii=True)
  return manifest


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--release', required=True, help='a make_mini --features release')
  parser.add_argument('--out', required=True, help='new folder for the corrupted copy')
  parser.add_argument('--faults', type=int, default=200)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--check', metavar='DATA_DIR', default='',
                      help='also build raw and features into DATA_DIR and reconcile')
  args = parser.parse_args(argv)
  try:
    manifest = fuzz(args.release, args.out, args.faults, args.seed)
  except (OSError, ValueError) as e:
    print(f'fuzz_release: error: {e}', file=sys.stderr)
    return 2
  counts = manifest['counts']
  print(f"fuzz_release: injected {counts['faults']} faults of {len(counts['by_kind'])} kinds "
        f"({counts['clones']} clones) into {args.out}; manifest {fuzz_reconcile.MANIFEST}")
  if not args.check:
    return 0
  failed = False
  for config in CONFIGS:
    result = fuzz_reconcile.build_and_reconcile(args.out, args.check, config)
    print(f"{config}: faults visible {result['faults_visible']}, survived "
          f"{result['faults_survived']}, items lost {result['items_lost']}, "
          f"mismatches {len(result['mismatches'])}")
    for line in result['mismatches'][:20]:
      print('  ' + line)
    failed |= bool(result['mismatches']) or result['items_lost'] > 0
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
