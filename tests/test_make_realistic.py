"""M5Product-realistic generator: layout, determinism, real media (pictures, Mandarin
speech, videos), shared product attributes, and a raw build that reconciles with
the manifest."""
import collections
import os
import re
import subprocess

import av
import numpy as np
import pytest
from PIL import Image

from data_prep import decode
from data_prep import make_realistic
from data_prep import release
from data_prep.mini import plan as plan_lib
from data_prep.realistic import sources
from data_prep.realistic import speech as speech_lib
from data_prep.realistic import world as world_lib
from m5_fixtures import build, observed_absences, tree_digest
from test_builder_mini import _check_against_manifest

pytest_plugins = ['m5_fixtures']
N = 32
LAYOUT = release.ReleaseLayout()
RAW_DEFECTS = {k for k in plan_lib.DEFECTS if k not in plan_lib.FEATURE_DEFECTS}



@pytest.fixture(scope='module')
def realistic(tmp_path_factory):
  """One release, written by one in-process worker."""
  root = str(tmp_path_factory.mktemp('realistic_w1'))
  manifest = make_realistic.generate(root, N, seed=3, workers=1, progress=False)
  records = dict(release.iter_annotations(os.path.join(root, LAYOUT.annotations)))
  return root, manifest, records


def _present(manifest, records, modality):
  absent = {i for i, m, _ in manifest['absent_raw'] if m == modality}
  return [i for i in records if i not in absent]


def test_same_bytes_for_any_worker_count(realistic, tmp_path, capfd):
  root, _, _ = realistic
  make_realistic.main(['--out', str(tmp_path), '--num_products', str(N), '--seed', '3',
                       '--workers', '2'])
  assert re.search(r'make_realistic: 32/32 items, [\d.]+ items/s, ETA', capfd.readouterr().err)
  first, second = tree_digest(root), tree_digest(str(tmp_path))
  assert sorted(first) == sorted(second)
  assert [p for p in first if first[p] != second[p]] == []


def test_layout_splits_and_manifest(realistic):
  root, manifest, records = realistic
  assert manifest['format'] == make_realistic.MANIFEST_FORMAT
  assert manifest['label_names'] == [c[0] for c in world_lib.CATEGORIES]
  assert len(records) == N == manifest['num_items']
  assert all(set(r) <= {'title', 'pv', 'label', 'url'} and isinstance(r['label'], int)
             for r in records.values())
  assert sorted(os.listdir(root)) == sorted([LAYOUT.annotations, LAYOUT.image_dir, LAYOUT.video_dir,
                                             LAYOUT.audio_dir, LAYOUT.split_dir, make_realistic.MANIFEST])
  splits = {s: release.read_id_list(LAYOUT.split_path(root, s)) for s in release.SPLIT_FILES}
  assert all(splits.values()), {s: len(v) for s, v in splits.items()}
  assert sorted(i for ids in splits.values() for i in ids) == sorted(records)
  assert {s: len(v) for s, v in splits.items()} == manifest['split_sizes']
  groups = collections.defaultdict(list)
  for item_id, inst in release.read_instances(os.path.join(root, LAYOUT.instances)).items():
    groups[inst].append(item_id)
  assert groups and all(2 <= len(g) <= 4 for g in groups.values())
  for members in groups.values():
    assert len(set(splits['fine_query']) & set(members)) == 1
    assert len({records[i]['label'] for i in members}) == 1
  assert manifest['absent_features'] is None
  assert {k for _, k in manifest['defects']} == RAW_DEFECTS


def test_plan_at_2000_items_sizes_the_eval_splits():
  """The plan alone (cheap): eval splits large enough, long tail, no tiny category."""
  world = world_lib.World.create()
  plan = make_realistic.make_plan(world, 2000, seed=0)
  sizes = {s: len(v) for s, v in plan.splits.items()}
  assert sizes['coarse_query'] >= 250 and sizes['fine_query'] >= 150, sizes
  assert sizes['cls_test'] >= 300 and sizes['pretrain'] >= 700, sizes
  positives = collections.Counter(inst for _, inst in plan.instances)
  assert set(positives.values()) <= {2, 3, 4} and len(positives) == sizes['fine_query']
  labels = collections.Counter(it.product.category for it in plan.items)
  assert len(labels) == len(world_lib.CATEGORIES) >= 20 and min(labels.values()) >= 10
  assert labels.most_common(1)[0][1] > 8 * min(labels.values())
  assert min(len(p) for p in world.pictures_of) >= 5 and len(world.pictures) >= 500


def test_media_are_real_pictures_videos_and_speech(realistic):
  root, manifest, records = realistic
  images = _present(manifest, records, 'image')
  arrays = []
  for item_id in images:
    with Image.open(LAYOUT.media_path(root, 'image', item_id)) as im:
      im.load()
      assert im.format == 'JPEG' and im.size == (224, 224) and im.mode == 'RGB'
      arrays.append(np.asarray(im, np.float32))
  # colour pictures: saturated pixels, not grey shapes
  assert np.mean([np.ptp(a, axis=-1).mean() > 10 for a in arrays]) > 0.8
  for item_id in _present(manifest, records, 'video'):
    with av.open(LAYOUT.media_path(root, 'video', item_id)) as c:
      stream = c.streams.video[0]
      assert stream.codec_context.name == 'h264' and stream.average_rate == 24
      assert (stream.codec_context.width, stream.codec_context.height) == (112, 112)
      frames = [f.to_ndarray(format='rgb24') for f in c.decode(stream)]
    assert 3 * 24 <= len(frames) <= 12 * 24
    assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 1.0   # the camera moves
  loud = []
  for item_id in _present(manifest, records, 'audio'):
    wave = decode.decode_audio(LAYOUT.media_path(root, 'audio', item_id))
    with av.open(LAYOUT.media_path(root, 'audio', item_id)) as c:
      assert c.format.name == 'mp3' and c.streams.audio[0].rate == 16000
    frame_rms = np.sqrt(np.mean(wave[:wave.size // 400 * 400].reshape(-1, 400) ** 2, axis=1))
    # speech (loud frames) over room noise (quiet frames): > 20 dB
    loud.append(np.percentile(frame_rms, 90) > 10 * np.percentile(frame_rms, 10) and
                np.abs(wave).max() > 0.2)
  assert all(loud) and len(loud) >= N // 2


def test_espeak_voice_reads_mandarin_not_pinyin_in_english():
  result = subprocess.run([sources.ESPEAK, '-v', speech_lib.VOICE, '-q', '-x', '限时特价，华泰通安蓝色卷饼'],
                          capture_output=True, text=True, check=True)
  assert '(en)' not in result.stdout and "S;'iE51n" in result.stdout   # xian4: Mandarin phonemes


def test_listings_of_a_product_share_its_words(realistic):
  root, manifest, records = realistic
  instances = release.read_instances(os.path.join(root, LAYOUT.instances))
  groups = collections.defaultdict(list)
  for item_id, inst in instances.items():
    groups[inst].append(item_id)
  noisy = {i for i, _ in manifest['noisy_title']}
  broken = {i for i, _ in manifest['defects']}
  checked = 0
  for members in groups.values():
    tables = [dict(release.parse_pv(records[i]['pv'])) for i in members
              if records[i].get('pv') and i not in broken]
    titles = [records[i]['title'] for i in members if records[i].get('title') and i not in noisy | broken]
    if len(tables) >= 2:
      assert len({t['品牌'] for t in tables}) == 1
      assert all(title.count(tables[0]['品牌']) for title in titles)   # the brand is in every title
      checked += 1
  assert checked >= 1
  cjk = re.compile(r'[\u4e00-\u9fff]')
  titles = [r['title'] for r in records.values() if r.get('title') and not release.has_bad_encoding(r['title'])]
  assert sum(bool(cjk.search(t)) for t in titles) == len(titles)


def test_manifest_equals_what_decoders_find(realistic):
  root, manifest, records = realistic
  expected = collections.defaultdict(dict)
  for item_id, modality, reason in manifest['absent_raw']:
    expected[item_id][modality] = reason
  observed = {i: observed_absences(root, i, r) for i, r in records.items()}
  assert {i: o for i, o in observed.items() if o} == dict(expected)


def test_raw_build_reconciles_with_manifest(realistic, tmp_path):
  root, manifest, _ = realistic
  builder, report = build(root, tmp_path, 'raw')
  _check_against_manifest(builder, report, manifest, 'raw')


def test_missing_debian_package_is_one_line(monkeypatch, tmp_path):
  monkeypatch.setattr(sources, 'DEBIAN', (('fonts-noto-color-emoji', str(tmp_path / 'none.ttf')),
                                          ('espeak-ng', 'no-such-espeak-binary')))
  with pytest.raises(SystemExit) as e:
    make_realistic.main(['--out', str(tmp_path / 'out'), '--num_products', '4', '--quiet'])
  message = str(e.value)
  assert '\n' not in message and 'fonts-noto-color-emoji espeak-ng' in message
  assert 'apt-get install -y fonts-noto-color-emoji espeak-ng' in message
