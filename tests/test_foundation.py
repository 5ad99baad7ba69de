"""Foundation checks: fake devices, the release contract's readers."""
import json

import jax
import pytest

from data_prep import release


def test_eight_fake_devices():
  assert jax.device_count() == 8


def test_streaming_annotations_match_json(tmp_path):
  data = {f'id{i}': {'title': f'标题 {i} Nike', 'pv': '颜色#:#红#;#材质#:#棉', 'label': i % 5, 'url': 'u'}
          for i in range(300)}
  path = tmp_path / 'a.json'
  path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding='utf-8')
  for chunk in (7, 64, 1 << 20):
    assert list(release.iter_annotations(str(path), chunk_chars=chunk)) == list(data.items())


def test_streaming_annotations_keeps_bad_bytes_and_reports_broken_json(tmp_path):
  path = tmp_path / 'a.json'
  path.write_bytes(b'{"x": {"title": "ab\xff\xfe"}, "y": {}}')
  items = list(release.iter_annotations(str(path), chunk_chars=3))
  assert [k for k, _ in items] == ['x', 'y']
  assert release.has_bad_encoding(items[0][1]['title'])
  path.write_text('{"a": {"t": 1}, "b": {"t"')
  with pytest.raises(release.AnnotationsError, match='bad JSON at char'):
    list(release.iter_annotations(str(path)))


def test_pv_parsing():
  assert release.parse_pv('颜色#:#红#;#材质#:#棉#;#') == [('颜色', '红'), ('材质', '棉')]
  for bad in ('颜色红', '#:#红', 'a#:#b#:#c', None):
    with pytest.raises(release.MalformedPV):
      release.parse_pv(bad)


@pytest.mark.parametrize('bad', ['../x', 'a/b', '.hidden', '', 'a\\b', 'x' * 200])
def test_unsafe_ids_rejected(tmp_path, bad):
  with pytest.raises(release.UnsafeIdError):
    release.safe_path(str(tmp_path), 'images', bad, '.jpg')


def test_safe_path_inside(tmp_path):
  p = release.ReleaseLayout().media_path(str(tmp_path), 'image', 'i_123')
  assert p.endswith('images/i_123.jpg')
