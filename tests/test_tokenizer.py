"""The sentencepiece tokenizer: special ids, round trip, byte fallback, CLI."""
import pytest

from data_prep import tokenizer
import m5_tiny_release


@pytest.fixture(scope='module')
def model_path(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tok_release'))
  m5_tiny_release.write(root)
  assert tokenizer.main(['--manual_dir', root, '--vocab_size', '320']) == 0
  return f'{root}/spm_320.model'  # the default location: beside the data


def test_special_ids(model_path):
  sp = tokenizer.load(model_path)
  assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
  assert sp.piece_to_id('[MASK]') == 4 and sp.id_to_piece(4) == '[MASK]'
  # [MASK] is one piece even inside text.
  assert 4 in sp.encode('红色 [MASK] 棉')


def test_round_trip_chinese_and_english(model_path):
  sp = tokenizer.load(model_path)
  for text in ('耐克 Nike 运动鞋 男款', '材质 cotton 棉', '阿迪达斯 T恤 summer 2024'):
    ids = sp.encode(text)
    assert tokenizer.UNK_ID not in ids
    assert sp.decode(ids) == text


def test_byte_fallback_for_unseen_characters(model_path):
  sp = tokenizer.load(model_path)
  text = '鑫龘 😀'  # characters the tiny corpus never saw
  pieces = sp.encode(text, out_type=str)
  assert '<0xF0>' in pieces  # the emoji's first UTF-8 byte
  assert tokenizer.UNK_ID not in sp.encode(text)
  assert sp.decode(sp.encode(text)) == text


def test_training_text_is_the_pretrain_split_only(tmp_path):
  m5_tiny_release.write(str(tmp_path))
  # Keep only one item in the pretraining list: its title, keys and values remain.
  (tmp_path / 'splits' / 'pretrain.txt').write_text('good1\n')
  import collections
  skipped = collections.Counter()
  assert list(tokenizer.iter_training_text(str(tmp_path), skipped=skipped)) == [
      '阿迪达斯 T恤 summer', '尺码', 'L']
  (tmp_path / 'splits' / 'pretrain.txt').write_text('bad_pv\nbad_bytes\n')
  assert list(tokenizer.iter_training_text(str(tmp_path), skipped=skipped)) == [
      '帽子', '颜色', '红色', '材质', '棉 cotton', '品牌', 'Nike']
  assert skipped == {'pv/malformed_field': 1, 'title/bad_encoding': 1}


def test_missing_release_is_a_clear_error(tmp_path, capsys):
  assert tokenizer.main(['--manual_dir', str(tmp_path)]) == 2
  assert 'not found' in capsys.readouterr().err
