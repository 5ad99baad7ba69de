"""A hand-made release of 9 items with one known defect each (builder tests).

Independent of data_prep/make_mini.py on purpose: every defect and its expected
reason is written down here, next to the code that injects it.
"""
from __future__ import annotations

import fractions
import json
import os

import av
import numpy as np
from PIL import Image

from data_prep import release

GOOD_PV = '颜色#:#红色#;#材质#:#棉 cotton#;#品牌#:#Nike'

# item_id -> (record, {modality: reason} for raw, {modality: reason} for features)
ITEMS = {
    'good0': ({'title': '耐克 Nike 运动鞋 男款', 'pv': GOOD_PV, 'label': 3, 'url': 'u'}, {}, {}),
    'good1': ({'title': '阿迪达斯 T恤 summer', 'pv': '尺码#:#L', 'label': '7', 'url': 'u'}, {}, {}),
    'trunc_jpg': ({'title': '杯子 cup', 'pv': GOOD_PV, 'label': 'kitchen', 'url': 'u'},
                  {'image': 'corrupt_file'}, {'image': 'bad_features'}),
    'not_video': ({'title': '手机壳', 'pv': GOOD_PV, 'label': 'phone', 'url': 'u'},
                  {'video': 'corrupt_file'}, {'video': 'corrupt_file'}),
    'empty_mp3': ({'title': '耳机 earphone', 'pv': GOOD_PV, 'label': 1, 'url': 'u'},
                  {'audio': 'empty_file'}, {'audio': 'empty_file'}),
    'bad_pv': ({'title': '帽子', 'pv': '颜色红色#;#材质', 'label': 1, 'url': 'u'},
               {'table': 'malformed_field'}, {'table': 'malformed_field'}),
    'bad_bytes': ({'title': None, 'pv': GOOD_PV, 'label': 2, 'url': 'u'},  # title bytes patched in
                  {'text': 'bad_encoding'}, {'text': 'bad_encoding'}),
    'no_media': ({'title': '袜子 socks', 'pv': GOOD_PV, 'label': 'kitchen', 'url': 'u'},
                 {m: 'missing_file' for m in ('image', 'video', 'audio')},
                 {m: 'missing_file' for m in ('image', 'video', 'audio')}),
    'no_title': ({'title': '  ', 'pv': '', 'url': 'u'},
                 {'text': 'missing_field', 'table': 'missing_field'},
                 {'text': 'missing_field', 'table': 'missing_field'}),
}
BAD_BYTES_TITLE = b'\xe5\x95\x86\xff\xfe bad'  # '商' then invalid UTF-8
# Split lists: pretrain has every item plus the rejects below.
REJECTS = {'../evil': 'unsafe_id', 'ghost': 'unknown_id', 'not_object': 'malformed_record'}
DUPLICATE = 'good0'  # appears twice in the annotations -> one duplicate_id
INSTANCES = {'good0': 'p1', 'good1': 'p1', 'trunc_jpg': '42'}


def _write_video(path, seconds=3, fps=24, size=64):
  with av.open(path, 'w') as out:
    stream = out.add_stream('libx264', rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = 'yuv420p'
    for i in range(seconds * fps):
      img = np.full((size, size, 3), (i * 3) % 256, np.uint8)
      img[:, : size // 2, 0] = 255
      frame = av.VideoFrame.from_ndarray(img, format='rgb24')
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode(None):
      out.mux(packet)


def _write_audio(path, seconds=2.0, rate=22050, hz=440.0):
  with av.open(path, 'w', format='mp3') as out:
    stream = out.add_stream('mp3', rate=rate)
    stream.layout = 'mono'
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    step = 1152
    for i, start in enumerate(range(0, samples.size, step)):
      chunk = samples[start:start + step][None, :]
      frame = av.AudioFrame.from_ndarray(chunk, format='flt', layout='mono')
      frame.sample_rate = rate
      frame.pts = start
      frame.time_base = fractions.Fraction(1, rate)
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode(None):
      out.mux(packet)


def write(root: str) -> None:
  """Writes the tiny release (raw media and features) under root."""
  layout = release.ReleaseLayout()
  for sub in (layout.image_dir, layout.video_dir, layout.audio_dir, layout.split_dir,
              *dict(layout.feature_dirs).values()):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  rng = np.random.default_rng(0)
  for item_id in ITEMS:
    if item_id == 'no_media':
      continue
    image_path = layout.media_path(root, 'image', item_id)
    img = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    img.save(image_path, quality=90)
    if item_id == 'trunc_jpg':
      data = open(image_path, 'rb').read()
      open(image_path, 'wb').write(data[: len(data) // 2])
    video_path = layout.media_path(root, 'video', item_id)
    if item_id == 'not_video':
      open(video_path, 'wb').write(b'<html>this is not a video</html>' * 10)
    else:
      _write_video(video_path)
    audio_path = layout.media_path(root, 'audio', item_id)
    if item_id == 'empty_mp3':
      open(audio_path, 'wb').close()
    else:
      _write_audio(audio_path)
    for name, shape in release.FEATURE_SHAPES.items():
      array = rng.standard_normal(shape).astype(np.float16 if name != 'image_boxes' else np.float32)
      if name == 'video_s3d' and item_id == 'good1':
        array = array[:5]  # 5 seconds of video: 5 valid rows
      if name == 'image_regions' and item_id == 'trunc_jpg':
        array[0, 0] = np.nan
      path = layout.feature_path(root, name, item_id)
      if name == 'video_s3d' and item_id == 'not_video':
        open(path, 'wb').write(b'\x93NUMPY garbage')
      elif name == 'audio_mel' and item_id == 'empty_mp3':
        open(path, 'wb').close()
      else:
        np.save(path, array)
  # Annotations: JSON by hand, to hold a duplicate key, a non-object and bad bytes.
  parts = []
  for item_id, (record, _, _) in ITEMS.items():
    text = json.dumps(record, ensure_ascii=False).encode('utf-8')
    if item_id == 'bad_bytes':
      text = text.replace(b'"title": null', b'"title": "' + BAD_BYTES_TITLE + b'"')
    parts.append(json.dumps(item_id).encode() + b': ' + text)
  parts.append(b'"not_object": [1, 2]')
  parts.append(b'"good0": {"title": "dup", "pv": "", "label": 0}')
  with open(os.path.join(root, layout.annotations), 'wb') as f:
    f.write(b'{\n' + b',\n'.join(parts) + b'\n}\n')
  ids = list(ITEMS)
  lists = {
      'pretrain': ids + list(REJECTS),
      'coarse_query': ['good0', 'trunc_jpg'], 'coarse_gallery': ['good1', 'no_media', 'bad_pv'],
      'fine_query': ['good0'], 'fine_gallery': ['good1', 'trunc_jpg'],
      'cls_train': ids[:6], 'cls_test': ids[6:],
  }
  for split, listed in lists.items():
    with open(layout.split_path(root, split), 'w') as f:
      f.write('\n'.join(listed) + '\n')
  with open(os.path.join(root, layout.instances), 'w') as f:
    f.write(''.join(f'{k}\t{v}\n' for k, v in INSTANCES.items()))
  LISTS.update(lists)


LISTS: dict[str, list[str]] = {}


def expected_pretrain(form: str) -> dict:
  """The build report we expect for the pretrain split."""
  absent = {m: {} for m in release.MODALITIES}
  for _, raw, feats in ITEMS.values():
    for m, r in (raw if form == 'raw' else feats).items():
      absent[m][r] = absent[m].get(r, 0) + 1
  rejected = {}
  for r in list(REJECTS.values()) + ['duplicate_id']:
    rejected[r] = rejected.get(r, 0) + 1
  return {'items_in': len(ITEMS) + len(REJECTS) + 1, 'items_written': len(ITEMS),
          'rejected': rejected, 'absent': absent}
