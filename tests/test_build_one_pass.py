"""The m5product build parses the annotations once for all splits (issue 19 #5),
and each split gets exactly what a per-split filter of the annotations gives."""
import collections

import numpy as np
import pytest

from data_prep import release
from data_prep.m5product import M5ProductConfig
from data_prep.m5product import examples
from data_prep.m5product import splits as splits_lib
import m5_tiny_release as tiny
from m5_fixtures import build, read_split

pytest_plugins = ['m5_fixtures']
LAYOUT = release.ReleaseLayout()


@pytest.fixture
def parse_count(monkeypatch):
  """Counts the streaming parses of an annotations file."""
  count = collections.Counter()
  parse = release.iter_annotations

  def counted(path, *args, **kwargs):
    count[str(path)] += 1
    return parse(path, *args, **kwargs)

  monkeypatch.setattr(release, 'iter_annotations', counted)
  return count


def _plans(root):
  return {s: splits_lib.plan_split(s, release.read_id_list(LAYOUT.split_path(str(root), s)))
          for s in release.SPLIT_FILES}


def test_one_pass_routes_each_split_as_a_per_split_filter(tiny_release, tmp_path, parse_count):
  annotations = str(tiny_release / LAYOUT.annotations)
  records = list(release.iter_annotations(annotations))  # the reference
  parses = parse_count[annotations]
  tally = examples.Tally()
  routed = splits_lib.route_annotations(annotations, _plans(tiny_release), str(tmp_path), tally)
  assert parse_count[annotations] == parses + 1
  for split, listed in tiny.LISTS.items():
    first = {}
    for item_id, record in records:
      if item_id in listed:
        first.setdefault(item_id, record)
    expected = [(i, r) for i, r in first.items() if isinstance(r, dict)]
    assert list(splits_lib.iter_records(routed.record_files[split])) == expected, split
  # Known counts: pretrain lists every item plus one unsafe, one unknown and one
  # non-object id, and the annotations repeat good0; fine_query lists good0 only.
  assert tiny.expected_pretrain('raw')['rejected'] == {
      r: tally.counts[f'pretrain/rejected/{r}'] for r in release.REJECT_REASONS}
  assert tally.counts['pretrain/items_in'] == len(tiny.ITEMS) + len(tiny.REJECTS) + 1
  assert tally.counts['fine_query/items_in'] == 2  # good0 and its duplicate
  assert tally.counts['fine_query/rejected/duplicate_id'] == 1
  assert routed.label_vocab == {'kitchen': 0, 'phone': 1} and routed.unlisted == 0


def test_plain_build_parses_once(tiny_release, tiny_features, tmp_path, parse_count):
  config = M5ProductConfig(name='features_two', form='features',
                           splits=('coarse_query', 'fine_gallery'))
  builder, report = build(tiny_release, tmp_path, config)
  assert list(parse_count.values()) == [1]
  for split in config.splits:
    assert report['splits'][split] == tiny_features[1]['splits'][split]
    assert sorted(read_split(builder, split)) == sorted(read_split(tiny_features[0], split))
  assert not (tmp_path / 'm5product' / 'features_two' / '1.0.0' / 'annotations_by_split.tmp').exists()


def test_beam_build_parses_once(tiny_release, tiny_features, tmp_path, parse_count):
  """Beam, two splits that share an item (good0, and its duplicate): one parse,
  and the plain build's reports and examples (two, to keep the DirectRunner quick)."""
  config = M5ProductConfig(name='features_two_beam', form='features',
                           splits=('pretrain', 'fine_query'))
  builder, report = build(tiny_release, tmp_path, config, beam=True)
  assert list(parse_count.values()) == [1] and report['beam']
  plain, plain_report = tiny_features
  for split in config.splits:
    assert report['splits'][split] == plain_report['splits'][split], split
    a, b = read_split(plain, split), read_split(builder, split)
    assert sorted(a) == sorted(b), split
    for item_id in a:
      for key in ('label', 'title', 'pv_values', 'image_regions', 'video_s3d', 'audio_mel'):
        np.testing.assert_array_equal(a[item_id][key], b[item_id][key], err_msg=f'{split} {item_id}')
