"""Reconciles an m5product build of a fuzzed release with its fault manifest.

    from data_prep import fuzz_reconcile
    result = fuzz_reconcile.build_and_reconcile(FUZZED, DATA_DIR, 'raw')

The manifest (data_prep/fuzz_release.py) says, per config, what the build
report must contain and which (item, modality) pairs must be absent; this
module compares, and counts the figures the reliability suite reports.
"""
from __future__ import annotations

import json
import os

from data_prep import release

# The fault manifest's file name in a fuzzed release: data_prep/fuzz_release.py writes it
# (and imports this module for its --check), this module reads it.
MANIFEST = 'fuzz_manifest.json'


def read_presence(builder, splits) -> dict:
  """{split: {item_id: {modality: present}}} of a built m5product dataset (media not decoded)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  skip = {k: tfds.decode.SkipDecoding() for k in ('image', 'video') if k in builder.info.features}
  out = {}
  for split in splits:
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=skip)
    out[split] = {e['item_id'].decode('utf-8', 'surrogateescape'):
                  {m: bool(e['present'][m]) for m in release.MODALITIES}
                  for e in tfds.as_numpy(ds)}
  return out


def reconcile(manifest: dict, config: str, report: dict, presence: dict) -> dict:
  """Compares one config's build with the manifest.

  Returns {'faults_visible', 'faults_survived', 'failed_faults' (ids), 'items_lost',
  'mismatches'}: a
  fault survived when its item is rejected and counted under the expected
  reason, or written with the modality absent, counted under the expected reason;
  items lost = listings neither written nor counted as rejected.
  """
  expected = manifest['expected'][config]
  mismatches = []
  for split, want in expected['splits'].items():
    got = report['splits'].get(split)
    if got is None:
      mismatches.append(f'{config}/{split}: no split in the build report')
      continue
    for key in ('items_in', 'items_written', 'rejected'):
      if got[key] != want[key]:
        mismatches.append(f'{config}/{split} {key}: built {got[key]}, expected {want[key]}')
    for modality in release.MODALITIES:
      if got['absent'].get(modality, {}) != want['absent'][modality]:
        mismatches.append(f'{config}/{split} absent {modality}: built {got["absent"][modality]}'
                          f', expected {want["absent"][modality]}')
  want_absent = {(i, m) for i, m, _ in expected['absent']}
  items_lost = 0
  for split, want in expected['splits'].items():
    written = presence.get(split, {})
    rejected = sum(report['splits'].get(split, {}).get('rejected', {}).values())
    items_lost += max(0, want['items_in'] - len(written) - rejected)
    if sorted(written) != want['written']:
      mismatches.append(f'{config}/{split}: written ids differ: missing '
                        f'{sorted(set(want["written"]) - set(written))[:5]}, unexpected '
                        f'{sorted(set(written) - set(want["written"]))[:5]}')
    for item_id, present in written.items():
      for modality, is_present in present.items():
        if is_present == ((item_id, modality) in want_absent):
          mismatches.append(f'{config}/{split} {item_id} {modality}: present={is_present}')

  def counted(split, path):
    """True when the report's count under `path` equals the expected one."""
    got = report['splits'].get(split, {})
    want = expected['splits'][split]
    for key in path:
      got, want = got.get(key, {}), want.get(key, {})
    return got == want

  visible = survived = 0
  failed = []
  for fault in manifest['faults']:
    effect = fault['effect'][config]
    if effect is None:
      continue
    visible += 1
    split, item_id = fault['split'], fault['item_id']
    if effect[0] == 'rejected':  # (a duplicate's first listing is written)
      ok = counted(split, ('rejected', effect[1])) and (
          effect[1] == 'duplicate_id' or item_id not in presence.get(split, {}))
    else:
      _, modality, reason = effect
      present = presence.get(split, {}).get(item_id)
      ok = present is not None and not present[modality] and counted(
          split, ('absent', modality, reason))
    survived += bool(ok)
    if not ok:
      failed.append(fault['id'])
  return {'faults_visible': visible, 'faults_survived': survived, 'failed_faults': failed,
          'items_lost': items_lost, 'mismatches': mismatches}


def build_and_reconcile(fuzzed: str, data_dir: str, config: str) -> dict:
  """Builds `config` of the fuzzed release (plain path) and reconciles it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import data_prep.m5product  # pylint: disable=g-import-not-at-top,unused-import
  with open(os.path.join(fuzzed, MANIFEST), encoding='utf-8') as f:
    manifest = json.load(f)
  builder = tfds.builder('m5product', config=config, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=fuzzed))
  with open(os.path.join(builder.data_dir, 'build_report.json'), encoding='utf-8') as f:
    report = json.load(f)
  presence = read_presence(builder, manifest['expected'][config]['splits'])
  return reconcile(manifest, config, report, presence)
