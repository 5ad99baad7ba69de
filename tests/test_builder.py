"""The m5product TFDS builder and the bounded decoders, on a hand-made release."""
import struct
import zlib

import numpy as np
import pytest

from data_prep import decode
from data_prep import release
from data_prep.m5product import M5ProductConfig
import m5_tiny_release as tiny
from m5_fixtures import build, read_split

pytest_plugins = ['m5_fixtures']


# ---------------------------------------------------------------- decoders

def test_log_mel_known_answer():
  t = np.arange(12 * decode.SAMPLE_RATE) / decode.SAMPLE_RATE
  mel, frames = decode.log_mel(np.sin(2 * np.pi * 1000 * t))
  assert mel.shape == (80, 751) and frames == 751
  centres = decode._mel_to_hz(np.linspace(decode._hz_to_mel(0), decode._hz_to_mel(8000), 82))[1:-1]
  assert mel.mean(axis=1).argmax() == np.abs(centres - 1000).argmin()
  short, frames = decode.log_mel(np.ones(decode.SAMPLE_RATE, np.float32))
  assert frames == 1 + decode.SAMPLE_RATE // decode.HOP == 63
  assert (short[:, 63:] == 0).all() and (short[:, :63] != 0).all()


def _png_header_only(width, height):
  """A PNG that claims width x height but carries no pixel data."""
  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b'')


def test_image_bounds_checked_before_decoding(tmp_path):
  bomb = tmp_path / 'bomb.png'
  bomb.write_bytes(_png_header_only(100_000, 100_000))  # 10 Gpixel claimed, 60 bytes on disk
  with pytest.raises(decode.Absent) as e:
    decode.decode_image(str(bomb), 32)
  assert e.value.reason == 'too_large'
  small = tmp_path / 'small.png'
  small.write_bytes(_png_header_only(64, 64))
  with pytest.raises(decode.Absent) as e:
    decode.decode_image(str(small), 32, decode.Bounds(max_image_pixels=1000))
  assert e.value.reason == 'too_large'
  with pytest.raises(decode.Absent) as e:
    decode.decode_image(str(small), 32)  # claims pixels it does not have
  assert e.value.reason == 'corrupt_file'
  with pytest.raises(decode.Absent) as e:
    decode.decode_image(str(tmp_path / 'nope.jpg'), 32)
  assert e.value.reason == 'missing_file'


def test_video_sampled_at_one_fps_and_bounded(tiny_release):
  path = str(tiny_release / 'videos' / 'good0.mp4')  # 3 s at 24 fps, left half red
  frames = decode.decode_video(path, 32)
  assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8
  assert (frames[:, :, :12, 0] > 200).all()
  # Frame k is taken at k seconds: the grey level ramps 3 per frame -> 72 per second.
  grey = frames[:, 16, 28, 1].astype(int)
  np.testing.assert_allclose(grey, [0, 72, 144], atol=12)
  assert decode.decode_video(path, 32, max_frames=2).shape[0] == 2
  assert decode.decode_video(path, 32, bounds=decode.Bounds(max_video_seconds=1.5)).shape[0] == 2
  with pytest.raises(decode.Absent) as e:
    decode.decode_video(path, 32, bounds=decode.Bounds(max_video_pixels=100))
  assert e.value.reason == 'too_large'


def test_feature_checks(tmp_path):
  path = str(tmp_path / 'f.npy')
  np.save(path, np.ones((5, 1024), np.float16))
  array, rows = decode.load_feature(path, (12, 1024), variable_axis=0)
  assert rows == 5 and array.shape == (12, 1024) and array[5:].sum() == 0
  for bad in (np.ones((13, 1024)), np.ones((5, 1000)), np.full((12, 1024), np.inf),
              np.ones((12, 1024), np.int32)):
    np.save(path, bad)
    with pytest.raises(decode.Absent) as e:
      decode.load_feature(path, (12, 1024), variable_axis=0)
    assert e.value.reason == 'bad_features'
  # Stored as float16: past 65504 would become inf, so it is a bad feature, not an inf.
  np.save(path, np.full((5, 1024), 6e4, np.float32))
  array, _ = decode.load_feature(path, (12, 1024), variable_axis=0, store_dtype=np.float16)
  assert array.dtype == np.float16 and array.max() == np.float16(6e4)
  np.save(path, np.full((5, 1024), 7e4, np.float32))
  assert decode.load_feature(path, (12, 1024), variable_axis=0)[0].max() == 7e4
  with pytest.raises(decode.Absent, match='beyond the float16 range') as e:
    decode.load_feature(path, (12, 1024), variable_axis=0, store_dtype=np.float16)
  assert e.value.reason == 'bad_features'


# ---------------------------------------------------------------- the builder

@pytest.mark.parametrize('form', ['raw', 'features'])
def test_report_counts_every_item_and_reason(form, tiny_raw, tiny_features):
  _, report = tiny_raw if form == 'raw' else tiny_features
  assert report['config'] == form
  assert report['splits']['pretrain'] == tiny.expected_pretrain(form)
  for split, entry in report['splits'].items():
    assert entry['items_in'] == entry['items_written'] + sum(entry['rejected'].values()), split
    assert entry['items_written'] == len(set(tiny.LISTS[split]) & set(tiny.ITEMS)), split


def test_examples_raw(tiny_raw):
  builder, _ = tiny_raw
  examples = read_split(builder, 'pretrain')
  assert sorted(examples) == sorted(tiny.ITEMS)
  for item_id, (_, raw_absent, _) in tiny.ITEMS.items():
    present = {m: bool(v) for m, v in examples[item_id]['present'].items()}
    assert present == {m: m not in raw_absent for m in release.MODALITIES}, item_id
  good = examples['good0']
  assert good['image'].shape == (224, 224, 3) and good['image'].std() > 20
  assert good['video'].shape == (3, 112, 112, 3)
  assert good['audio_mel'].dtype == np.float16 and good['audio_mel'].shape == (80, 751)
  assert 120 <= good['audio_frames'] <= 135  # 2 s of audio (+ mp3 padding)
  assert (good['audio_mel'][:, good['audio_frames']:] == 0).all()
  assert good['title'].decode() == '耐克 Nike 运动鞋 男款'
  assert [k.decode() for k in good['pv_keys']] == ['颜色', '材质', '品牌']
  assert [v.decode() for v in good['pv_values']] == ['红色', '棉 cotton', 'Nike']
  empty = examples['no_media']
  assert empty['image'].max() == 0 and empty['video'].shape[0] == 0
  assert empty['audio_frames'] == 0 and not empty['audio_mel'].any()
  assert examples['bad_bytes']['title'] == b'' and examples['bad_pv']['pv_keys'].size == 0


def test_labels_and_instances(tiny_raw):
  examples = read_split(tiny_raw[0], 'pretrain')
  labels = {k: (int(e['label']), e['label_name'].decode()) for k, e in examples.items()}
  # Numeric labels (int or digit strings) keep their value; other strings index
  # their sorted vocabulary: kitchen=0, phone=1.
  assert labels['good0'] == (3, '3') and labels['good1'] == (7, '7')
  assert labels['trunc_jpg'] == (0, 'kitchen') and labels['not_video'] == (1, 'phone')
  assert labels['no_title'] == (-1, '')
  instance = {k: int(e['instance']) for k, e in examples.items()}
  assert instance['good0'] == instance['good1'] > 0  # 'p1': a stable hash
  assert instance['trunc_jpg'] == 42 and instance['bad_pv'] == -1


def test_examples_features(tiny_release, tiny_features):
  examples = read_split(tiny_features[0], 'pretrain')
  for item_id, (_, _, feat_absent) in tiny.ITEMS.items():
    present = {m: bool(v) for m, v in examples[item_id]['present'].items()}
    assert present == {m: m not in feat_absent for m in release.MODALITIES}, item_id
  good = examples['good0']
  np.testing.assert_array_equal(
      good['image_regions'], np.load(tiny_release / 'features/image_regions/good0.npy'))
  assert good['image_boxes'].dtype == np.float32 and good['video_frames'] == 12
  assert good['audio_frames'] == 751
  short = examples['good1']
  assert short['video_frames'] == 5 and not short['video_s3d'][5:].any()
  assert examples['not_video']['video_frames'] == 0


def test_a_build_without_a_tokenizer_stores_text_and_no_token_ids(tiny_raw):
  """No <release>/spm.model: the metadata says so and the ids are empty (the input
  pipeline then tokenises the text; tests/test_input_pipeline.py covers a build with ids)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder, _ = tiny_raw
  assert tfds.builder_from_directory(builder.data_dir).info.metadata['tokenizer'] is None
  examples = read_split(builder, 'pretrain')
  assert any(e['title'] for e in examples.values())
  for e in examples.values():
    assert e['title_ids'].size == e['pv_ids'].size == e['pv_lengths'].size == 0


def _assert_same_examples(a, b, keys):
  assert sorted(a) == sorted(b)
  for item_id in a:
    for key in keys:
      np.testing.assert_array_equal(a[item_id][key], b[item_id][key], err_msg=f'{item_id} {key}')


def test_beam_path_writes_the_same_examples(tiny_release, tiny_raw, tmp_path):
  """Beam (DirectRunner) == plain path, example for example, and the same report."""
  plain, plain_report = tiny_raw
  # One split keeps the DirectRunner quick; the split code is the same for all.
  config = M5ProductConfig(name='raw_pretrain', form='raw', splits=('pretrain',))
  beam, beam_report = build(tiny_release, tmp_path, config, beam=True)
  assert beam_report['beam'] and not plain_report['beam']
  assert list(beam_report['splits']) == ['pretrain']
  assert beam_report['splits']['pretrain'] == plain_report['splits']['pretrain']
  for split in ('pretrain',):
    _assert_same_examples(read_split(plain, split), read_split(beam, split),
                          ('label', 'label_name', 'instance', 'present', 'title', 'pv_keys',
                           'pv_values', 'image', 'video', 'audio_mel', 'audio_frames'))


def test_unshuffled_beam_writer_stores_every_example(tiny_release, tiny_features, tmp_path):
  """`--nondeterministic_order` (no GroupByKey of the examples): the same examples, all
  of them; with ArrayRecord, which TFDS cannot write that way, a one-line error first."""
  config = M5ProductConfig(name='features_pretrain', form='features', splits=('pretrain',))
  builder, report = build(tiny_release, tmp_path / 'tfrecord', config, beam=True,
                          nondeterministic_order=True, num_shards=2)
  assert report['beam'] and builder.info.nondeterministic_order
  assert report['splits']['pretrain'] == tiny_features[1]['splits']['pretrain']
  _assert_same_examples(read_split(tiny_features[0], 'pretrain'), read_split(builder, 'pretrain'),
                        ('label', 'present', 'pv_values', 'image_regions', 'video_s3d',
                         'audio_mel'))
  with pytest.raises(ValueError, match=r'^m5product: --nondeterministic_order writes TFRecord '
                     r'only .*tfds convert_format'):
    build(tiny_release, tmp_path / 'ar', config, file_format='array_record', beam=True,
          nondeterministic_order=True, num_shards=2)


def test_array_record_format(tiny_release, tiny_features, tmp_path):
  """--file_format array_record writes the same examples, readable by random access."""
  builder, report = build(tiny_release, tmp_path, 'features', file_format='array_record')
  assert builder.info.file_format.value == 'array_record'
  assert report['splits'] == tiny_features[1]['splits']
  _assert_same_examples(read_split(tiny_features[0], 'pretrain'), read_split(builder, 'pretrain'),
                        ('label', 'present', 'pv_values', 'image_regions', 'image_boxes',
                         'video_s3d', 'video_frames', 'audio_mel', 'audio_frames'))
