"""Release-build defects of issue 16 (and over-int64 ids of issue 15), one tiny release each.

The cases live in benchmarks/reliability/build_faults.py, shared with the
reliability suite's table; each builds a 6-item release in a few seconds.
"""
import os
import sys

import pytest

from data_prep import release
from data_prep.m5product import examples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.reliability import build_faults  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.parametrize('case', build_faults.CASES, ids=lambda c: c.name)
def test_build_survives_the_defect(case, tmp_path):
  result = build_faults.run_case(case, str(tmp_path))
  assert result['problems'] == [], result['problems']
  assert result['survived'] and result['items_lost'] == 0
  report = result['report']
  if report is not None:  # items in = written + rejected, per split, also with a skipped split
    for split, entry in report['splits'].items():
      assert entry['items_in'] == entry['items_written'] + sum(entry['rejected'].values()), split


def test_checks_can_fail(tmp_path):
  """A build that ignored the defect would be caught: the checks are not vacuous (a
  healthy build fails each check but the BOM one, whose reader test is below)."""
  root = str(tmp_path / 'healthy')
  build_faults.write_base(root)
  builder, report = build_faults.build(root, str(tmp_path / 'tfds'))
  for case in build_faults.CASES:
    if case.name == 'bom_in_list':
      continue
    assert case.check(None if case.fails else report, builder, None), case.name
  assert build_faults.items_lost(report, {**build_faults.listed(root), 'pretrain': [*build_faults.ITEMS, 'p9']}) == 1


def test_numeric_and_text_instance_ids_read_back_exactly(tmp_path):
  """12-digit ids keep their value (past 2^31), text ids get their 62-bit hash."""
  texts = {'p0': 'SKU-红-1', 'p2': 'SKU-红-1', 'p1': '-7', 'p4': '-7'}
  for name, instances in (('numeric', build_faults.INSTANCES), ('text', texts)):
    root = str(tmp_path / name)
    build_faults.write_base(root, instances)
    builder, _ = build_faults.build(root, str(tmp_path / f'{name}_tfds'))
    for split in ('fine_query', 'fine_gallery'):
      for item_id, (_, instance) in build_faults.read_ids(builder, split).items():
        assert instance == examples.instance_of(instances.get(item_id)), (name, item_id)
  assert examples.instance_of('617074902229') == 617074902229 > 2**31
  assert examples.instance_of('-7') == examples.hash_id('-7') >= 0  # never read as unknown
  assert 0 <= examples.hash_id('SKU-红-1') < 2**62
  assert examples.instance_of('') == examples.instance_of(None) == -1


def test_label_and_instance_overflow_unit():
  assert examples.label_of(2**63 - 1, {}) == (2**63 - 1, str(2**63 - 1))
  assert examples.label_of(2**63, {}) == (examples.hash_id(str(2**63)), str(2**63))
  assert examples.label_of('0' * 30 + '5', {})[0] == 5  # leading zeros: still fits
  assert examples.label_of('9' * 5000, {})[0] == examples.hash_id('9' * 5000)
  assert examples.instance_of(str(2**63)) == examples.hash_id(str(2**63))


def test_bom_and_huge_json_numbers_are_read(tmp_path):
  path = tmp_path / 'list.txt'
  path.write_bytes('\ufeffp0\r\np1\n\ufeffp2\n'.encode('utf-8'))
  assert release.read_id_list(str(path)) == ['p0', 'p1', 'p2']
  annotations = tmp_path / 'a.json'
  annotations.write_text('{"p0": {"label": ' + '9' * 5000 + '}}')
  [(item_id, record)] = release.iter_annotations(str(annotations))
  assert item_id == 'p0' and record['label'] == '9' * 5000  # kept as digits, not an error


def test_annotated_items_in_no_list_are_counted(tmp_path):
  """An annotated item that no split list names is neither written nor silently lost."""
  root = str(tmp_path / 'release')
  build_faults.write_base(root)
  records = build_faults.read_records(root)
  records['p9'] = dict(records['p0'])
  build_faults.write_annotations(root, records)
  _, report = build_faults.build(root, str(tmp_path / 'tfds'))
  assert report['unlisted_records'] == 1 and report['skipped_splits'] == {}


def test_a_missing_list_is_skipped_unless_named(tmp_path):
  from data_prep.m5product import M5ProductConfig  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'release')
  build_faults.write_base(root)
  os.remove(os.path.join(root, 'splits', 'cls_test.txt'))
  builder, report = build_faults.build(root, str(tmp_path / 'tfds'))
  assert report['skipped_splits'] == {'cls_test': 'missing_list'}
  assert 'cls_test' not in builder.info.splits and 'cls_train' in builder.info.splits
  named = M5ProductConfig(name='raw_cls', form='raw', splits=('cls_train', 'cls_test'))
  with pytest.raises(FileNotFoundError, match=r'splits/cls_test\.txt \(') as e:
    build_faults.build(root, str(tmp_path / 'tfds_named'), named)
  assert 'cls_train' not in str(e.value) and '\n' not in str(e.value)


def test_examples_lost_by_the_writer_fail_the_build(tmp_path, monkeypatch):
  """A runner that stores fewer examples than were converted (Beam's DirectRunner
  multi_processing did, benchmarks/results/conversion.md) fails the build loudly."""
  from data_prep.m5product import m5product_dataset_builder as builder_lib  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'release')
  build_faults.write_base(root)
  convert = examples.convert

  def convert_and_count_twice(split, *args, **kwargs):   # 'converted' one more than stored
    out = convert(split, *args, **kwargs)
    if split == 'pretrain' and not getattr(convert_and_count_twice, 'done', False):
      convert_and_count_twice.done = True
      args[-1].inc(f'{split}/items_written')
    return out

  monkeypatch.setattr(examples, 'convert', convert_and_count_twice)
  with pytest.raises(builder_lib.ExamplesLost, match=r'^m5product build stored fewer .*\(pretrain: 1 lost\)') as e:
    build_faults.build(root, str(tmp_path / 'tfds'))
  assert '\n' not in str(e.value)
  # The incomplete build is not kept (TFDS removes it): nothing to read by mistake.
  assert not list((tmp_path / 'tfds').rglob(builder_lib.REPORT_NAME))
  assert not list((tmp_path / 'tfds').rglob('dataset_info.json'))
