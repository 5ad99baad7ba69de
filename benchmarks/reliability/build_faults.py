"""Release-build defects (issue 16): one tiny release per defect, built, and checked.

    from benchmarks.reliability import build_faults
    for case in build_faults.CASES:
      result = build_faults.run_case(case, WORK_DIR)  # {'survived', 'items_lost', 'problems', ...}

Each case writes a 6-item release (small JPEGs, no video or audio) with one
defect, builds it (config `raw`, the plain path) and says what a correct build
does with it. `tests/test_build_faults.py` runs every case; the reliability suite
(benchmarks/reliability/run.py) tabulates them (tried, survived, items lost).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Callable

import numpy as np

from data_prep import release

ITEMS = tuple(f'p{i}' for i in range(6))
LISTS = {
    'pretrain': ITEMS, 'coarse_query': ITEMS[:2], 'coarse_gallery': ITEMS[2:],
    'fine_query': ITEMS[:2], 'fine_gallery': ITEMS[2:], 'cls_train': ITEMS[:4],
    'cls_test': ITEMS[4:],
}
# Instances: p0 with p2 and p3, p1 with p4 (12-digit numbers, as in the real release).
INSTANCES = {'p0': '617074902229', 'p2': '617074902229', 'p3': '617074902229',
             'p1': '100000000007', 'p4': '100000000007'}
BOM = '\ufeff'


def write_base(root: str, instances: dict[str, str] | None = None) -> None:
  """The healthy release: every item has title, table and a 48x48 JPEG; labels 0/1."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  layout = release.ReleaseLayout()
  for sub in (layout.image_dir, layout.video_dir, layout.audio_dir, layout.split_dir):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  rng = np.random.default_rng(0)
  records = {}
  for n, item_id in enumerate(ITEMS):
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
        layout.media_path(root, 'image', item_id), quality=90)
    records[item_id] = {'title': f'商品 {item_id}', 'pv': f'颜色#:#红{n}', 'label': n % 2,
                        'url': 'u'}
  write_annotations(root, records)
  for split, ids in LISTS.items():
    write_list(root, split, ids)
  instances = INSTANCES if instances is None else instances
  with open(os.path.join(root, layout.instances), 'w', encoding='utf-8') as f:
    f.write(''.join(f'{k}\t{v}\n' for k, v in instances.items()))


def write_annotations(root: str, records: dict, raw_values: dict[str, str] | None = None) -> None:
  """The annotations JSON; raw_values[item_id] replaces the label by literal JSON text."""
  parts = []
  for item_id, record in records.items():
    text = json.dumps(record, ensure_ascii=False)
    if raw_values and item_id in raw_values:
      text = text.replace(f'"label": {json.dumps(record["label"])}',
                          f'"label": {raw_values[item_id]}')
    parts.append(f'{json.dumps(item_id)}: {text}')
  with open(os.path.join(root, release.ReleaseLayout.annotations), 'w', encoding='utf-8') as f:
    f.write('{\n' + ',\n'.join(parts) + '\n}\n')


def read_records(root: str) -> dict:
  return dict(release.iter_annotations(os.path.join(root, release.ReleaseLayout.annotations)))


def write_list(root: str, split: str, ids, prefix: str = '') -> None:
  with open(release.ReleaseLayout().split_path(root, split), 'w', encoding='utf-8') as f:
    f.write(prefix + ''.join(f'{i}\n' for i in ids))


def build(root: str, data_dir: str, config='raw'):
  """(builder, report) of a plain-path build, as `tfds build data_prep/m5product`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import data_prep.m5product  # pylint: disable=g-import-not-at-top,unused-import
  builder = tfds.builder('m5product', config=config, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
  with open(os.path.join(builder.data_dir, 'build_report.json'), encoding='utf-8') as f:
    return builder, json.load(f)


def read_ids(builder, split: str) -> dict[str, tuple[int, int]]:
  """{item_id: (label, instance)} of a built split, media not decoded."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  skip = {k: tfds.decode.SkipDecoding() for k in ('image', 'video')}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=skip)
  return {e['item_id'].decode(): (int(e['label']), int(e['instance'])) for e in tfds.as_numpy(ds)}


def listed(root: str) -> dict[str, list[str]]:
  """The release's split lists as written (lines, as a build must account for them)."""
  out = {}
  for split in release.SPLIT_FILES:
    path = release.ReleaseLayout().split_path(root, split)
    if os.path.isfile(path):
      out[split] = release.read_id_list(path)
  return out


def items_lost(report: dict, lists: dict) -> int:
  """Listings neither written nor counted as rejected, over every split built or skipped."""
  lost = 0
  for split, ids in lists.items():
    entry = report['splits'].get(split, {'items_written': 0, 'rejected': {}})
    lost += max(0, len(ids) - entry['items_written'] - sum(entry['rejected'].values()))
  return lost


# ---------------------------------------------------------------- the defects

def _link(root: str, modality: str, item_id: str, target: str) -> None:
  path = release.ReleaseLayout().media_path(root, modality, item_id)
  if os.path.lexists(path):
    os.remove(path)
  os.symlink(target, path)


def _outside_links(root: str) -> None:
  """p1: absolute link to a real JPEG outside; p2: dangling; p3: '../store/p3.jpg';
  p4: a video linked to '../store/p4.mp4'."""
  store = os.path.join(root, 'store')
  os.makedirs(store)
  outside = os.path.join(os.path.dirname(os.path.abspath(root)),
                         os.path.basename(root) + '_outside.jpg')
  shutil.copyfile(os.path.join(root, 'images', 'p1.jpg'), outside)
  shutil.copyfile(os.path.join(root, 'images', 'p3.jpg'), os.path.join(store, 'p3.jpg'))
  open(os.path.join(store, 'p4.mp4'), 'wb').write(b'\0' * 64)
  _link(root, 'image', 'p1', outside)
  _link(root, 'image', 'p2', '/nonexistent/m5product/p2.jpg')
  _link(root, 'image', 'p3', '../store/p3.jpg')
  _link(root, 'video', 'p4', '../store/p4.mp4')


def _check_outside_links(report, builder, error) -> list[str]:
  absent = report['splits']['pretrain']['absent']
  problems = []
  if absent['image'].get('unsafe_path') != 3:
    problems.append(f"pretrain absent image: {absent['image']}, expected unsafe_path=3")
  if absent['video'].get('unsafe_path') != 1:
    problems.append(f"pretrain absent video: {absent['video']}, expected unsafe_path=1")
  return problems


OVER_INT64 = {'p0': '99999999999999999999', 'p1': '"123456789012345678901234567890"'}
OVER_INT64_INSTANCE = '9' * 30


def _over_int64(root: str) -> None:
  """p0: label 10^20-1 as a JSON number; p1: a 30-digit label string; p5: a 30-digit instance."""
  write_annotations(root, read_records(root), raw_values=OVER_INT64)
  with open(os.path.join(root, release.ReleaseLayout.instances), 'a', encoding='utf-8') as f:
    f.write(f'p5\t{OVER_INT64_INSTANCE}\n')


def _check_over_int64(report, builder, error) -> list[str]:
  from data_prep.m5product import examples  # pylint: disable=g-import-not-at-top
  ids = read_ids(builder, 'pretrain')
  want = {'p0': examples.hash_id(OVER_INT64['p0']),
          'p1': examples.hash_id(json.loads(OVER_INT64['p1']))}
  problems = [f'{i}: label {ids[i][0]}, expected the hash {v}' for i, v in want.items()
              if ids[i][0] != v]
  if ids['p5'][1] != examples.hash_id(OVER_INT64_INSTANCE):
    problems.append(f"p5: instance {ids['p5'][1]}, expected the hash")
  if ids['p0'][1] != int(INSTANCES['p0']):
    problems.append(f"p0: instance {ids['p0'][1]}, expected {INSTANCES['p0']}")
  return problems


def _empty_list(root: str) -> None:
  write_list(root, 'cls_test', [])


def _check_empty_list(report, builder, error) -> list[str]:
  problems = []
  if report.get('skipped_splits', {}).get('cls_test') != 'empty_list':
    problems.append(f"skipped_splits {report.get('skipped_splits')}, expected cls_test")
  if 'cls_test' in builder.info.splits:
    problems.append('cls_test was written')
  for split in set(LISTS) - {'cls_test'}:
    if builder.info.splits[split].num_examples != len(LISTS[split]):
      problems.append(f'{split}: {builder.info.splits[split].num_examples} examples')
  return problems


def _no_splits_folder(root: str) -> None:
  shutil.rmtree(os.path.join(root, 'splits'))


def _check_no_splits_folder(report, builder, error) -> list[str]:
  if error is None:
    return ['built without any split list']
  missing = [f for f in release.SPLIT_FILES.values() if f not in error]
  return ([f'error is not one line: {error!r}'] if '\n' in error else []) + (
      [f'error does not name {missing}'] if missing else [])


def _bom(root: str) -> None:
  write_list(root, 'coarse_query', LISTS['coarse_query'], prefix=BOM)
  write_list(root, 'pretrain', LISTS['pretrain'], prefix=BOM)


def _check_bom(report, builder, error) -> list[str]:
  rejected = report['total']['rejected']
  problems = [f'rejected {rejected}'] if rejected else []
  if builder.info.splits['coarse_query'].num_examples != len(LISTS['coarse_query']):
    problems.append('coarse_query lost its first id')
  return problems


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  what: str
  inject: Callable[[str], None]
  check: Callable[[dict | None, object, str | None], list[str]]  # (report, builder, error)
  faults: int = 1      # defects the case injects (a case survives them all or none)
  fails: bool = False  # the correct outcome is a one-line error


CASES = (
    Case('symlink_outside', 'media links out of their folder (absolute, dangling, ../store)',
         _outside_links, _check_outside_links, faults=4),
    Case('over_int64_ids', 'label and instance ids past int64', _over_int64, _check_over_int64,
         faults=3),
    Case('empty_split_list', 'one empty split list (cls_test.txt)', _empty_list,
         _check_empty_list),
    Case('no_splits_folder', 'splits/ missing', _no_splits_folder, _check_no_splits_folder,
         fails=True),
    Case('bom_in_list', 'UTF-8 BOM at the start of split lists', _bom, _check_bom, faults=2),
)


def run_case(case: Case, work: str) -> dict:
  """Builds the case's release; {'survived', 'items_lost', 'problems', 'error', 'report',
  'seconds'}."""
  start = time.time()
  root, data_dir = os.path.join(work, case.name), os.path.join(work, case.name + '_tfds')
  shutil.rmtree(root, ignore_errors=True)
  shutil.rmtree(data_dir, ignore_errors=True)
  write_base(root)
  case.inject(root)
  report = builder = error = None
  try:
    builder, report = build(root, data_dir)
  except Exception as e:  # pylint: disable=broad-except
    error = f'{type(e).__name__}: {e}'
  if error is not None and not case.fails:
    problems = [f'build failed: {error[:300]}']
  else:
    problems = case.check(report, builder, error)
  lost = items_lost(report, listed(root)) if report is not None else 0
  if lost:
    problems.append(f'{lost} listings neither written nor counted')
  return {'survived': not problems, 'items_lost': lost, 'problems': problems, 'error': error,
          'report': report, 'seconds': round(time.time() - start, 1)}
