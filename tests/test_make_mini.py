"""M5Product-mini generator: determinism, layout, decodable media, exact manifest."""
import collections
import os
import re

import av
import numpy as np
import pytest
from PIL import Image

from data_prep import decode
from data_prep import make_mini
from data_prep import release
from data_prep.mini import plan as plan_lib
from data_prep.mini import world as world_lib
from m5_fixtures import observed_absences, tree_digest

N = 40
LAYOUT = release.ReleaseLayout()
DOWNSTREAM = [s for s in release.SPLIT_FILES if s != 'pretrain']



@pytest.fixture(scope='session')
def mini(tmp_path_factory):
  """One release with features, written by one in-process worker."""
  root = str(tmp_path_factory.mktemp('mini_w1'))
  manifest = make_mini.generate(root, N, seed=3, features=True, workers=1, progress=False)
  records = dict(release.iter_annotations(os.path.join(root, LAYOUT.annotations)))
  return root, manifest, records


def test_same_bytes_for_any_worker_count(mini, tmp_path):
  root, _, _ = mini
  make_mini.main(['--out', str(tmp_path), '--num_products', str(N), '--seed', '3',
                  '--features', '--workers', '2', '--quiet'])
  first, second = tree_digest(root), tree_digest(str(tmp_path))
  assert sorted(first) == sorted(second)
  assert [p for p in first if first[p] != second[p]] == []


def test_another_seed_gives_another_release(mini, tmp_path, capfd):
  make_mini.generate(str(tmp_path), 12, seed=4, workers=1)
  assert re.search(r'make_mini: 12/12 items, [\d.]+ items/s, ETA', capfd.readouterr().err)
  root = mini[0]
  with open(os.path.join(root, LAYOUT.annotations), 'rb') as f, \
       open(tmp_path / LAYOUT.annotations, 'rb') as g:
    assert f.read() != g.read()


def test_layout_and_splits(mini):
  root, manifest, records = mini
  assert len(records) == N == manifest['num_items']
  assert all(set(r) <= {'title', 'pv', 'label', 'url'} and isinstance(r['label'], int)
             for r in records.values())
  splits = {s: release.read_id_list(LAYOUT.split_path(root, s)) for s in release.SPLIT_FILES}
  assert all(splits.values()), {s: len(v) for s, v in splits.items()}
  every = [i for ids in splits.values() for i in ids]
  assert sorted(every) == sorted(records)            # each item in exactly one split
  assert not set(splits['pretrain']) & set(i for s in DOWNSTREAM for i in splits[s])
  assert {s: len(v) for s, v in splits.items()} == manifest['split_sizes']

  instances = release.read_instances(os.path.join(root, LAYOUT.instances))
  groups = collections.defaultdict(list)
  for item_id, inst in instances.items():
    groups[inst].append(item_id)
  assert groups and all(2 <= len(g) <= 4 for g in groups.values())
  query, gallery = set(splits['fine_query']), set(splits['fine_gallery'])
  for members in groups.values():   # one query per group; its positives are in the gallery
    assert len(query & set(members)) == 1 and len(gallery & set(members)) == len(members) - 1
    assert len({records[i]['label'] for i in members}) == 1
  assert query <= set(instances)


def test_media_decode(mini):
  root, manifest, records = mini
  absent = {(i, m) for i, m, _ in manifest['absent_raw']}
  seen = collections.Counter()
  for item_id in records:
    if (item_id, 'image') not in absent:
      with Image.open(LAYOUT.media_path(root, 'image', item_id)) as im:
        im.load()
        assert im.format == 'JPEG' and im.size == (128, 128) and im.mode == 'RGB'
      seen['image'] += 1
    if (item_id, 'video') not in absent:
      with av.open(LAYOUT.media_path(root, 'video', item_id)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == 'h264' and stream.average_rate == 24
        frames = sum(1 for _ in c.decode(stream))
      assert 3 * 24 <= frames <= 12 * 24
      seen['video'] += 1
    if (item_id, 'audio') not in absent:
      with av.open(LAYOUT.media_path(root, 'audio', item_id)) as c:
        stream = c.streams.audio[0]
        assert c.format.name == 'mp3' and stream.codec_context.name.startswith('mp3')
        assert stream.rate == 16000
        samples = sum(f.samples for f in c.decode(stream))
      assert 3 * 16000 <= samples <= 12 * 16000 + 2 * 1152
      seen['audio'] += 1
  assert min(seen.values()) >= N // 2, seen


def test_features_shapes(mini):
  root, manifest, records = mini
  absent = {(i, m) for i, m, _ in manifest['absent_features']}
  for item_id in records:
    for name, modality in (('image_regions', 'image'), ('image_boxes', 'image'),
                           ('video_s3d', 'video'), ('audio_mel', 'audio')):
      path = LAYOUT.feature_path(root, name, item_id)
      if (item_id, modality) in absent:
        continue
      array = np.load(path)
      assert array.shape == release.FEATURE_SHAPES[name]
      assert array.dtype == (np.float32 if name == 'image_boxes' else np.float16)
      assert np.isfinite(array).all()


@pytest.mark.parametrize('config', ['raw', 'features'])
def test_manifest_equals_what_decoders_find(mini, config):
  root, manifest, records = mini
  expected = collections.defaultdict(dict)
  for item_id, modality, reason in manifest[f'absent_{config}']:
    assert reason in release.ABSENT_REASONS
    expected[item_id][modality] = reason
  observed = {i: observed_absences(root, i, r, config) for i, r in records.items()}
  assert {i: o for i, o in observed.items() if o} == dict(expected)
  counts = manifest['counts'][config]
  assert counts['absent_total'] == len(manifest[f'absent_{config}'])
  assert sum(sum(c.values()) for c in counts['by_modality'].values()) == counts['absent_total']
  # Every broken-file kind is there even at this size, each really broken.
  kinds = {k for _, k in manifest['defects']}
  assert kinds == set(plan_lib.DEFECTS)


def test_raw_broken_files_on_disk(mini):
  root, manifest, records = mini
  for item_id, kind in manifest['defects']:
    if kind == 'truncated_jpeg':
      with pytest.raises(OSError, match='truncated'):
        with Image.open(LAYOUT.media_path(root, 'image', item_id)) as im:
          im.load()
    elif kind == 'not_a_video':
      with pytest.raises(av.error.FFmpegError):
        av.open(LAYOUT.media_path(root, 'video', item_id)).close()
    elif kind == 'empty_mp3':
      assert os.path.getsize(LAYOUT.media_path(root, 'audio', item_id)) == 0
    elif kind == 'malformed_pv':
      with pytest.raises(release.MalformedPV):
        release.parse_pv(records[item_id]['pv'])
  with open(os.path.join(root, LAYOUT.annotations), 'rb') as f:
    raw = f.read()
  with pytest.raises(UnicodeDecodeError):   # really non-UTF-8 bytes in the file
    raw.decode('utf-8')
  noisy = dict(manifest['noisy_title'])
  assert noisy and all(records[i]['title'] == records[src]['title'] and
                       records[i]['label'] != records[src]['label'] for i, src in noisy.items())


def test_chinese_text(mini):
  _, _, records = mini
  titles = [r['title'] for r in records.values() if r.get('title') and
            not release.has_bad_encoding(r['title'])]
  cjk = re.compile(r'[\u4e00-\u9fff]')
  assert sum(bool(cjk.search(t)) for t in titles) >= 0.9 * len(titles)
  assert any(re.search(r'[A-Za-z]{3}', t) for t in titles)   # brands, specs
  keys = collections.Counter(k for r in records.values() if r.get('pv')
                             for k, _ in _try_parse(r['pv']))
  assert len(keys) >= 10 and sum(bool(cjk.search(k)) for k in keys) >= 0.9 * len(keys)


def _try_parse(pv):
  try:
    return release.parse_pv(pv)
  except release.MalformedPV:
    return []


def test_defect_rates_at_moderate_size():
  """Rates come from the plan alone, so a large N is cheap to check."""
  num = 5000
  world = world_lib.World.create(0)
  plan = plan_lib.make_plan(world, num, seed=0)
  manifest = plan_lib.build_manifest(plan, world, {}, with_features=True)
  raw = manifest['counts']['raw']
  rates = plan_lib.DefectRates()
  broken = sum(round(getattr(rates, k) * num) for k in plan_lib.DEFECTS
               if k not in plan_lib.FEATURE_DEFECTS)
  assert raw['items_missing_any'] == round(rates.missing * num) + broken
  assert abs(raw['items_missing_any'] / num - 0.20) < 0.02
  assert raw['items_unimodal'] == round(rates.unimodal * num)
  assert manifest['counts']['noisy_title'] == round(rates.noisy_title * num)
  kinds = collections.Counter(k for _, k in manifest['defects'])
  assert kinds['truncated_jpeg'] == 10 and sum(kinds[k] for k in plan_lib.FEATURE_DEFECTS) == 15
  # Long tail: all categories used, head >> tail.
  labels = collections.Counter(it.product.category for it in plan.items)
  assert len(labels) == len(world_lib.CATEGORIES) >= 20
  assert labels[0] > 8 * labels[len(world_lib.CATEGORIES) - 1]


def test_category_cues_name_or_narrow_the_category_and_identify_it_together():
  world = world_lib.World.create(7)
  for modality, mapping in world.cue_maps.items():
    counts = collections.Counter(mapping.tolist())
    assert len(counts) == world_lib.CUE_SIZES[modality]
    if modality in ('text', 'table', 'audio'):  # one cue value per category
      assert max(counts.values()) == 1
    else:                                        # 3-4 categories share a cue value
      assert min(counts.values()) >= 3
  joint = set(zip(*(m.tolist() for m in world.cue_maps.values())))
  assert len(joint) == world.num_categories
  assert world_lib.NUM_PV_KEYS >= 10


def test_cli_errors(tmp_path):
  (tmp_path / 'keep.txt').write_text('x')
  with pytest.raises(SystemExit, match='not empty'):
    make_mini.main(['--out', str(tmp_path), '--num_products', '3', '--quiet'])
  with pytest.raises(SystemExit, match='refusing to overwrite'):
    make_mini.main(['--out', str(tmp_path), '--num_products', '3', '--quiet', '--overwrite'])
  with pytest.raises(SystemExit, match='unimodal_rate'):
    make_mini.main(['--out', str(tmp_path / 'new'), '--unimodal_rate', '0.5', '--quiet'])


def test_video_frames_equal_the_full_grid_disk():
  """The windowed disk test (render.video_frames) gives exactly the frames of the
  plain formula over the whole 64 x 64 grid, wrapping included."""
  import dataclasses
  from data_prep.mini import render
  world = world_lib.World.create(0)
  plan = plan_lib.make_plan(world, 30, seed=0)
  base = render.clip_scene(world, plan.items[0].product, 0, 0, 0.15)
  rng = np.random.default_rng(0)
  for k in range(48):
    clip = dataclasses.replace(base, seconds=3, direction=k % world_lib.DIRECTIONS, tempo=k % 3,
                               start=tuple(float(v) for v in rng.uniform(-70, 140, 2)))
    n, s = clip.seconds * render.VIDEO_FPS, render.VIDEO_SIZE
    angle = 2 * np.pi * clip.direction / world_lib.DIRECTIONS
    t = np.arange(n, dtype=np.float32) / render.VIDEO_FPS
    speed = render.SPEEDS_PX_PER_S[clip.tempo]
    cx = clip.start[0] + speed * np.cos(angle) * t
    cy = clip.start[1] - speed * np.sin(angle) * t
    grid = np.arange(s, dtype=np.float32)
    dx = (grid[None, None, :] - cx[:, None, None] + s / 2) % s - s / 2
    dy = (grid[None, :, None] - cy[:, None, None] + s / 2) % s - s / 2
    want = np.where(dx * dx + dy * dy <= 36.0, np.uint8(clip.brightness), np.uint8(clip.background))
    got = render.video_frames(clip)
    assert got.dtype == np.uint8 and np.array_equal(got, want), k


def test_log_mel_frames_equal_the_gathered_frames():
  """decode.log_mel's strided frames give the bits of the explicit gather."""
  import scipy.fft
  rng = np.random.default_rng(0)
  for size in (100, 512, 513, 48_000, 48_256, 191_999, 192_256, 250_000):
    samples = (0.3 * rng.standard_normal(size)).astype(np.float32)
    got, valid = decode.log_mel(samples)
    x = samples[:(decode.MEL_FRAMES - 1) * decode.HOP]
    pad = decode.N_FFT // 2
    padded = np.pad(x, pad, mode='reflect' if x.size > pad else 'constant')
    want_valid = 1 + x.size // decode.HOP
    idx = np.arange(decode.N_FFT)[None, :] + decode.HOP * np.arange(want_valid)[:, None]
    spectrum = np.abs(scipy.fft.rfft(padded[idx] * decode._WINDOW, axis=-1)) ** 2
    want = np.zeros_like(got)
    want[:, :want_valid] = np.log(spectrum @ decode._MEL.T + decode.LOG_FLOOR).T
    assert valid == want_valid and got.tobytes() == want.tobytes(), size
