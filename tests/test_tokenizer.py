"""The sentencepiece tokenizer: special ids, round trip, byte fallback, CLI."""
import pytest

from data_prep import tokenizer
import m5_tiny_release


@pytest.fixture(scope='module')
def model_path(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tok_release'))
  m5_tiny_release.write(root)
  assert tokenizer.main(['--manual_dir', root, '--vocab_size', '320']) == 0
  return f'{root}/spm.model'  # the default location: beside the data, for the builder


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


def test_identity_sidecar_describes_the_model(model_path):
  import hashlib
  import json
  identity = json.load(open(model_path + '.json'))
  assert identity['sha256'] == hashlib.sha256(open(model_path, 'rb').read()).hexdigest()
  assert identity['character_coverage'] == identity['character_coverage_requested'] == 0.9995
  assert identity['pieces'] == tokenizer.load(model_path).get_piece_size()
  assert identity['vocab_size'] == 320


def _many_characters_release(root):
  """A text-only release whose 1500 titles use ~580 distinct Chinese characters
  (Zipf-like frequencies): more than a 600- or 800-piece vocabulary holds."""
  import json
  import os
  import numpy as np
  rng = np.random.default_rng(0)
  chars = np.array([chr(0x4E00 + i) for i in range(600)])
  weights = 1 / np.arange(1, 601) ** 1.2
  titles = {f'id{i}': ''.join(rng.choice(chars, 12, p=weights / weights.sum())) for i in range(1500)}
  with open(os.path.join(root, 'product5m_id_label.json'), 'w', encoding='utf-8') as f:
    json.dump({k: {'title': t, 'pv': '', 'label': 0} for k, t in titles.items()}, f, ensure_ascii=False)
  os.makedirs(os.path.join(root, 'splits'))
  with open(os.path.join(root, 'splits', 'pretrain.txt'), 'w') as f:
    f.write('\n'.join(titles) + '\n')
  return list(titles.values())


def test_coverage_is_lowered_to_the_highest_that_fits(tmp_path, capsys):
  import json
  import os
  import sentencepiece as spm
  titles = _many_characters_release(str(tmp_path))
  out = str(tmp_path / 'tok' / 'spm.model')
  assert tokenizer.main(['--manual_dir', str(tmp_path), '--out', out, '--vocab_size', '800']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert sum('coverage lowered to' in line for line in lines) == 1
  identity = json.load(open(out + '.json'))
  coverage = identity['character_coverage']
  assert 0.98 <= coverage < 0.9995 and identity['character_coverage_requested'] == 0.9995
  assert sorted(os.listdir(tmp_path / 'tok')) == ['spm.model', 'spm.model.json']  # no temp file
  sp = tokenizer.load(out)
  # Known answer from sentencepiece itself: the model's single-character pieces are
  # the characters the predicted count says the coverage keeps ...
  single = [i for i in range(sp.get_piece_size())
            if len(sp.id_to_piece(i)) == 1 and not (sp.is_control(i) or sp.is_byte(i))]
  counts = tokenizer.CharacterCounts()
  for title in titles:
    counts.add(title)
  assert len(single) == counts.required(coverage) <= 800 - len(tokenizer.META_PIECES)
  # ... and one step (1e-4) higher no longer fits 800 pieces.
  with pytest.raises(RuntimeError, match='Vocabulary size is smaller than required_chars'):
    with open(tmp_path / 'higher.model', 'wb') as f:
      tokenizer._train_once(titles, f, 800, round(coverage + 1e-4, 4), 10_000_000)
  # Rare characters are bytes, never <unk>; text round-trips.
  rare = titles[0] + chr(0x4E00 + 599)
  assert tokenizer.UNK_ID not in sp.encode(rare) and sp.decode(sp.encode(rare)) == rare


def test_impossible_vocabulary_is_one_line_and_keeps_the_old_model(tmp_path, capsys):
  import os
  _many_characters_release(str(tmp_path))
  out = str(tmp_path / 'spm.model')
  assert tokenizer.main(['--manual_dir', str(tmp_path), '--out', out, '--vocab_size', '800']) == 0
  before = open(out, 'rb').read(), open(out + '.json').read()
  capsys.readouterr()
  # 394 characters give coverage 0.98 (sentencepiece's lowest): 261 + 394 = 655.
  for vocab_size, says in (('600', 'too small for this text: even coverage 0.98 needs 394 '
                                   'characters beside the 261 special and byte pieces; '
                                   'use --vocab_size 655 or more'),
                           ('200', 'no piece for any character')):
    assert tokenizer.main(['--manual_dir', str(tmp_path), '--out', out,
                           '--vocab_size', vocab_size]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
  assert (open(out, 'rb').read(), open(out + '.json').read()) == before
  assert sorted(os.listdir(tmp_path)) == ['product5m_id_label.json', 'splits', 'spm.model',
                                          'spm.model.json']


def test_empty_pretraining_text_is_one_line(tmp_path, capsys):
  _many_characters_release(str(tmp_path))
  (tmp_path / 'splits' / 'pretrain.txt').write_text('not_an_item\n')
  out = str(tmp_path / 'spm.model')
  assert tokenizer.main(['--manual_dir', str(tmp_path), '--out', out, '--vocab_size', '800']) == 2
  assert 'no training text' in capsys.readouterr().err
  assert not (tmp_path / 'spm.model').exists()
