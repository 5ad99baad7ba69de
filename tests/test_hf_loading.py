"""Public checkpoints into m5_jax: a tiny random transformers BERT, saved with save_pretrained,
loaded into the text (and table) tower, gives the reference's hidden states at 1e-5 (fp32)."""
import json

import jax
import numpy as np
import pytest
from flax import linen as nn

from m5_jax import models
from m5_jax.models import public_checkpoints
import model_testlib

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

VOCAB, HIDDEN, LAYERS, HEADS, MLP = 100, 32, 2, 2, 64
# BERT's special pieces away from ids 0..4, so the vocabulary permutation is exercised.
PIECES = (['[PAD]'] + [f'[unused{i}]' for i in range(9)] + ['[UNK]', '[CLS]', '[SEP]', '[MASK]']
          + list('的红色连衣裙手机壳男女款') + ['ab', '##c', '##d', 'x', ',', '.']
          + [f'w{i}' for i in range(VOCAB - 32)])


@pytest.fixture(scope='module')
def bert_dir(tmp_path_factory):
  """A random BertForPreTraining (bert.* names + MLM head) saved as safetensors + vocab.txt."""
  torch.manual_seed(0)
  hf_config = transformers.BertConfig(
      vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
      intermediate_size=MLP, max_position_embeddings=40, type_vocab_size=2,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = transformers.BertForPreTraining(hf_config).eval()
  with torch.no_grad():  # non-trivial LayerNorms and biases (init leaves them at 1 / 0)
    for name, p in model.named_parameters():
      if 'LayerNorm' in name or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  path = tmp_path_factory.mktemp('bert')
  model.save_pretrained(path)
  (path / 'vocab.txt').write_text('\n'.join(PIECES) + '\n', encoding='utf-8')
  return path, model


def m5_config(modalities=('text',), **overrides):
  model = dict(hidden=HIDDEN, heads=HEADS, mlp_dim=MLP, encoder_layers=LAYERS, vocab_size=VOCAB)
  config = model_testlib.tiny_config('text_only', modalities, **{**model, **overrides})
  for m in config.modalities:
    config.modality[m].vocab_size = VOCAB
  return config


def init_params(config, batch):
  model = models.build(config)
  params = nn.unbox(model_testlib.random_params(model, batch, seed=1))
  return model, jax.tree.map(np.asarray, params)


def reference(model, ids, mask, token_types=None):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                token_type_ids=None if token_types is None else torch.tensor(token_types,
                                                                             dtype=torch.long),
                output_hidden_states=True)
  return out.hidden_states[-1].numpy(), out.prediction_logits.numpy()


def assert_tokens_are_berts(hf_model, out, batch, m, token_types=None):
  """Modality m's valid m5_jax tokens equal BERT's last hidden states at 1e-5 (m5_jax
  ids mapped to BERT's order). -> (BERT's hidden, logits, the order, the valid mask)."""
  order = public_checkpoints.project_vocab_order(list(PIECES))
  mask = batch[m]['mask']
  hidden, logits = reference(hf_model, order[batch[m]['ids']], mask, token_types)
  valid = mask[..., None]
  np.testing.assert_allclose(np.where(valid, out['tokens'][m], 0), np.where(valid, hidden, 0),
                             atol=1e-5, rtol=1e-5, err_msg=m)
  return hidden, logits, order, valid


def test_bert_text_tower_matches_transformers(bert_dir):
  path, hf_model = bert_dir
  config = m5_config()
  batch = model_testlib.random_batch(config, 3, present_prob=1.0, seed=4)
  model, params = init_params(config, batch)
  params, report = public_checkpoints.load('hf_bert', str(path), params, config)
  out = jax.jit(lambda p, b: model.apply({'params': p}, b))(params, batch)

  hidden, logits, order, valid = assert_tokens_are_berts(hf_model, out, batch, 'text')
  # The MLM head too: m5_jax's logit column j is BERT's column order[j].
  np.testing.assert_allclose(np.where(valid, out['predictions']['text'], 0),
                             np.where(valid, logits[..., order], 0), atol=1e-4, rtol=1e-5)
  assert np.abs(hidden[:, 1] - hidden[:, 2]).max() > 1e-2  # not vacuous

  # Every source tensor is mapped or skipped with a reason; every target loaded or new.
  sources = {s for v in report.mapped.values() for s in v.split(' + ')}
  saved = set(public_checkpoints.bert_names(public_checkpoints.read_hf_folder(str(path))[1]))
  assert sources | set(report.skipped) == saved and not sources & set(report.skipped)
  assert set(report.new) == {'contrastive_log_scale', 'contrastive_bias'}
  assert any('pooler' in s for s in report.skipped)


def test_bert_table_tower_keys_and_values_are_segments(bert_dir):
  """Table = BERT with token_type_ids = is_value; its encoder is its own copy."""
  path, hf_model = bert_dir
  config = m5_config(('text', 'table'), scan_layers=True)  # stacked layers load too
  batch = model_testlib.random_batch(config, 3, present_prob=1.0, seed=5)
  model, params = init_params(config, batch)
  params, report = public_checkpoints.load('hf_bert', str(path), params, config)
  assert 'encoders_table/transformer/layer_1/attention/query/kernel' in report.mapped
  out = jax.jit(lambda p, b: model.apply({'params': p}, b, heads=False))(params, batch)
  segments = batch['table']['is_value'].astype(np.int64)
  assert_tokens_are_berts(hf_model, out, batch, 'table', segments)


def test_table_tower_can_share_the_text_encoder(bert_dir):
  """model.shared_encoders='table=text': one BERT encoder runs both towers; the table's
  tokens are still BERT's with its segments (its own positions and type rows)."""
  path, hf_model = bert_dir
  config = m5_config(('text', 'table'), shared_encoders='table=text')
  batch = model_testlib.random_batch(config, 3, present_prob=1.0, seed=5)
  model, params = init_params(config, batch)
  assert 'encoders_table' not in params
  params, report = public_checkpoints.load('hf_bert', str(path), params, config)
  assert not any(t.startswith('encoders_table') for t in report.mapped)
  out = jax.jit(lambda p, b: model.apply({'params': p}, b, heads=False))(params, batch)
  for m, types in (('text', None), ('table', batch['table']['is_value'].astype(np.int64))):
    assert_tokens_are_berts(hf_model, out, batch, m, types)
  with pytest.raises(ValueError, match='model.shared_encoders=.table=image.: each pair'):
    models.build(m5_config(('text', 'table'), shared_encoders='table=image')).init(
        jax.random.key(0), batch)


def test_bert_towers_include_exclude(bert_dir):
  path, _ = bert_dir
  config = m5_config(('text', 'table'))
  batch = model_testlib.random_batch(config, 2, present_prob=1.0)
  _, params = init_params(config, batch)
  new_params, report = public_checkpoints.load('hf_bert', str(path), params, config,
                                               towers='text', exclude='^heads_')
  assert not any(t.startswith(('encoders_table', 'embedders_table', 'heads_'))
                 for t in report.mapped)
  table_wi = 'encoders_table/transformer/layer_0/mlp/wi/kernel'
  assert 'heads_text/bias' in report.new and table_wi in report.new
  flat = public_checkpoints.flatten
  np.testing.assert_array_equal(flat(new_params)[table_wi], flat(params)[table_wi])


@pytest.mark.parametrize('override,message', [
    (dict(heads=4), '--config.model.heads=2'),
    (dict(pre_ln=True), '--config.model.pre_ln=False'),
    (dict(mlp_dim=48), '--config.model.mlp_dim=64'),
])
def test_mismatched_model_is_one_line(bert_dir, override, message):
  path, _ = bert_dir
  config = m5_config(**override)
  batch = model_testlib.random_batch(config, 2, present_prob=1.0)
  _, params = init_params(config, batch)
  with pytest.raises(ValueError, match=message.replace('.', r'\.')) as e:
    public_checkpoints.load('hf_bert', str(path), params, config)
  assert '\n' not in str(e.value)


def test_bad_paths_and_tensors_are_one_line(bert_dir, tmp_path):
  path, _ = bert_dir
  config = m5_config()
  batch = model_testlib.random_batch(config, 2, present_prob=1.0)
  _, params = init_params(config, batch)
  with pytest.raises(FileNotFoundError, match='not a folder'):
    public_checkpoints.load('hf_bert', str(tmp_path / 'nope'), params, config)
  (tmp_path / 'config.json').write_text((path / 'config.json').read_text())
  with pytest.raises(FileNotFoundError, match='no model.safetensors or pytorch_model.bin'):
    public_checkpoints.load('hf_bert', str(tmp_path), params, config)
  # A tensor of the wrong shape names both sides.
  from safetensors import numpy as safetensors_numpy
  tensors = safetensors_numpy.load_file(str(path / 'model.safetensors'))
  tensors['bert.encoder.layer.1.intermediate.dense.bias'] = np.zeros(MLP + 1, np.float32)
  safetensors_numpy.save_file(tensors, str(tmp_path / 'model.safetensors'))
  (tmp_path / 'vocab.txt').write_text((path / 'vocab.txt').read_text())
  with pytest.raises(ValueError, match=r'encoder\.layer\.1\.intermediate\.dense\.bias \(65,\) does '
                     r'not fit encoders_text/transformer/layer_1/mlp/wi/bias \(64,\)'):
    public_checkpoints.load('hf_bert', str(tmp_path), params, config)
  # A tensor BERT does not have is named, not dropped.
  tensors = safetensors_numpy.load_file(str(path / 'model.safetensors'))
  tensors['bert.encoder.layer.0.adapter.weight'] = np.zeros(3, np.float32)
  safetensors_numpy.save_file(tensors, str(tmp_path / 'model.safetensors'))
  with pytest.raises(ValueError,
                     match=r'tensor encoder\.layer\.0\.adapter\.weight \(3,\) has no place'):
    public_checkpoints.load('hf_bert', str(tmp_path), params, config)


def test_wordpiece_matches_bert_tokenizer(bert_dir):
  path, _ = bert_dir
  reference = transformers.BertTokenizer(str(path / 'vocab.txt'), do_lower_case=True)
  ours = public_checkpoints.WordPieceTokenizer(str(path / 'vocab.txt'))
  order = public_checkpoints.project_vocab_order(list(PIECES))
  strings = ['红色连衣裙 男款', 'abcd, x.', 'ABC 手机壳女', 'abz 的', '  ', 'W1 w2 w3']
  for s in strings:
    want = reference.convert_tokens_to_ids(reference.tokenize(s))
    assert [int(order[i]) for i in ours.encode([s])[0]] == want, s
  assert ours.encode(['abcd'])[0] == [ours.ids['ab'], ours.ids['##c'], ours.ids['##d']]
  assert [ours.ids[p] for p in public_checkpoints.BERT_SPECIALS] == [0, 1, 2, 3, 4]


def test_formats_agree_with_the_config_schema():
  from m5_jax import config_lib
  assert public_checkpoints.FORMATS == config_lib.INIT_FORMATS


def test_train_starts_from_bert_through_init_from(bert_dir, tmp_path):
  """configs/bert_init.py + init_from format hf_bert: the step-0 checkpoint holds the BERT
  tensors (text and table towers, placed on the 8-device mesh); the rest stays at init."""
  from m5_jax import checkpointing, config_lib, train
  path, _ = bert_dir
  config, _ = config_lib.parse_command_line(
      ['--config', f'configs/bert_init.py:method=text_only,modalities=tp,size=tiny,batch_size=8,'
       f'bert={path}', '--config.input.dataset=synthetic', '--config.total_steps=0',
       '--config.modality.table.max_len=16', '--config.modality.text.max_len=12'], {})
  assert config.input.tokenizer == f'{path}/vocab.txt' and config.model.hidden == HIDDEN
  train.train(config, str(tmp_path))
  _, params = checkpointing.restore_params(str(tmp_path))
  params = jax.tree.map(np.asarray, params)
  values, report = public_checkpoints.convert('hf_bert', str(path), params, config)
  flat = public_checkpoints.flatten(params)
  assert set(values) == set(report.mapped)
  assert 'encoders_table/transformer/layer_1/mlp_ln/bias' in values
  for name, value in values.items():
    np.testing.assert_array_equal(flat[name], value, err_msg=name)
  assert not any(n.startswith(('encoders_', 'embedders_', 'word_embed')) for n in report.new)


def test_train_with_a_bad_bert_folder_is_one_line(bert_dir, tmp_path, capsys):
  from m5_jax import train
  path, _ = bert_dir
  code = train.main(['--config',
                     f'configs/bert_init.py:modalities=t,size=tiny,batch_size=8,bert={path}',
                     '--config.input.dataset=synthetic', '--config.total_steps=0',
                     '--config.modality.text.max_len=12', '--config.model.heads=4',
                     '--workdir', str(tmp_path / 'run')])
  err = capsys.readouterr().err.strip()  # the INFO log lines, then the error
  assert code == 1 and 'Traceback' not in err
  assert err.splitlines()[-1] == ('m5_jax.train: error: init_from (hf_bert): the BERT checkpoint '
                                  'needs --config.model.heads=2 (got 4)'), err


def test_bert_init_config_needs_a_folder():
  from m5_jax import config_lib
  with pytest.raises(config_lib.ConfigError, match='needs bert=DIR'):
    config_lib.load_config('configs/bert_init.py:size=tiny')
  with pytest.raises(config_lib.ConfigError, match='no readable BERT config.json'):
    config_lib.load_config('configs/bert_init.py:bert=/nonexistent')


def test_pytorch_bin_reads_like_safetensors(bert_dir, tmp_path):
  path, hf_model = bert_dir
  # transformers 5 saves safetensors only; a pytorch_model.bin is the torch.save'd state dict.
  torch.save(hf_model.state_dict(), tmp_path / 'pytorch_model.bin')
  (tmp_path / 'config.json').write_text((path / 'config.json').read_text())
  _, from_bin = public_checkpoints.read_hf_folder(str(tmp_path))
  _, from_safetensors = public_checkpoints.read_hf_folder(str(path))
  assert set(from_safetensors) <= set(from_bin)
  for name, value in from_safetensors.items():
    np.testing.assert_array_equal(from_bin[name], value, err_msg=name)


def test_text_preprocess_tokenises_with_the_bert_vocabulary(bert_dir):
  """The input pipeline's text plugin with config.input.tokenizer=<bert>/vocab.txt."""
  import tensorflow as tf
  from m5_jax import input_pipeline, modalities
  path, _ = bert_dir
  tokenizer = input_pipeline.load_tokenizer(str(path / 'vocab.txt'))
  cfg = m5_config().modality.text
  fields = modalities.get('text').preprocess(
      {'title': tf.constant('红色连衣裙 abcd'), 'present': {'text': tf.constant(1)}}, cfg,
      tokenizer)
  ids = fields['ids'].numpy()[:fields['mask'].numpy().sum()]
  words = ['红', '色', '连', '衣', '裙', 'ab', '##c', '##d']
  assert ids.tolist() == [2] + [tokenizer.ids[w] for w in words]  # BOS = [CLS] at id 2


def test_vit_image_tower_matches_transformers(tmp_path):
  """A random ViTForImageClassification ('vit.' names) into the raw image tower
  (modality.image.embed_norm=False: no LayerNorm on the patch embeddings, as in ViT)."""
  torch.manual_seed(1)
  hf_config = transformers.ViTConfig(
      hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
      intermediate_size=MLP, image_size=32, patch_size=16, num_labels=3,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  hf_model = transformers.ViTForImageClassification(hf_config).eval()
  with torch.no_grad():
    for name, p in hf_model.named_parameters():
      if 'layernorm' in name or name.endswith('bias') or 'token' in name:
        p.add_(0.1 * torch.randn_like(p))
  hf_model.save_pretrained(tmp_path)
  config = model_testlib.tiny_config('image_only', hidden=HIDDEN, heads=HEADS, mlp_dim=MLP,
                                     encoder_layers=LAYERS, layer_norm_eps=1e-12)
  config.modality.image.embed_norm = False
  batch = model_testlib.random_batch(config, 3, present_prob=1.0, seed=6)
  model, params = init_params(config, batch)
  params, report = public_checkpoints.load('hf_vit', str(tmp_path), params, config)
  assert set(report.skipped) == {'classifier.weight', 'classifier.bias'}
  out = jax.jit(lambda p, b: model.apply({'params': p}, b, heads=False))(params, batch)
  pixels = batch['image']['pixels'].astype(np.float32) / 127.5 - 1.0  # m5_jax's pixel scale
  with torch.no_grad():
    hidden = hf_model.vit(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2)).last_hidden_state
  np.testing.assert_allclose(out['tokens']['image'], hidden.numpy(), atol=1e-5, rtol=1e-5)
  assert set(report.new) == {'contrastive_log_scale', 'contrastive_bias'} | {
      f'heads_image/{p}' for p in ('norm/bias', 'norm/scale', 'out/bias', 'out/kernel',
                                   'transform/bias', 'transform/kernel')}
  config.modality.image.embed_norm = True
  with pytest.raises(ValueError, match=r'needs --config\.modality\.image\.embed_norm=False'):
    public_checkpoints.load('hf_vit', str(tmp_path), params, config)

  # Video frames reuse it: patch embedding, patch positions, layers (an initialisation).
  config = model_testlib.tiny_config('m5_mmt', ('image', 'video'), hidden=HIDDEN, heads=HEADS,
                                     mlp_dim=MLP, encoder_layers=LAYERS, layer_norm_eps=1e-12)
  config.modality.image.embed_norm = False
  _, params = init_params(config, model_testlib.random_batch(config, 2, present_prob=1.0))
  params, report = public_checkpoints.load('hf_vit', str(tmp_path), params, config,
                                           towers='image,video')
  video, image = params['embedders_video'], params['embedders_image']
  np.testing.assert_array_equal(video['patch']['kernel'], image['patch']['kernel'])
  np.testing.assert_array_equal(video['spatial_positions'], image['finish']['positions'][1:])
  assert {'embedders_video/finish/cls', 'embedders_video/finish/positions'} <= set(report.new)
  assert 'encoders_video/transformer/layer_1/mlp/wo/kernel' in report.mapped


def big_vision_npz(hf_model, path, old_layout: bool):
  """The ViT's weights under big_vision's names and layouts (big_vision/models/vit.py)."""
  from safetensors import numpy as safetensors_numpy
  hf_model.save_pretrained(path.parent / 'hf')  # the checkpoint names (transformers 5 renames
  sd = safetensors_numpy.load_file(str(path.parent / 'hf' / 'model.safetensors'))  # modules)
  hd = HIDDEN // HEADS
  conv = sd['vit.embeddings.patch_embeddings.projection.weight']  # [D, C, p, p]
  out = {'embedding/kernel': conv.transpose(2, 3, 1, 0),
         'embedding/bias': sd['vit.embeddings.patch_embeddings.projection.bias'],
         'Transformer/encoder_norm/scale': sd['vit.layernorm.weight'],
         'Transformer/encoder_norm/bias': sd['vit.layernorm.bias'],
         'head/kernel': sd['classifier.weight'].T, 'head/bias': sd['classifier.bias']}
  cls, pos = sd['vit.embeddings.cls_token'], sd['vit.embeddings.position_embeddings']
  if old_layout:  # positions over [CLS] + patches, in the encoder
    out.update({'cls': cls, 'Transformer/posembed_input/pos_embedding': pos})
  else:  # positions over the patches only; the [CLS] carries its own
    out.update({'cls': cls + pos[:, :1], 'pos_embedding': pos[:, 1:]})
  for i in range(LAYERS):
    hf, bv = f'vit.encoder.layer.{i}.', f'Transformer/encoderblock_{i}/'
    for name in ('query', 'key', 'value'):
      out[f'{bv}MultiHeadDotProductAttention_0/{name}/kernel'] = (
          sd[f'{hf}attention.attention.{name}.weight'].T.reshape(HIDDEN, HEADS, hd))
      out[f'{bv}MultiHeadDotProductAttention_0/{name}/bias'] = (
          sd[f'{hf}attention.attention.{name}.bias'].reshape(HEADS, hd))
    out[f'{bv}MultiHeadDotProductAttention_0/out/kernel'] = (
        sd[f'{hf}attention.output.dense.weight'].T.reshape(HEADS, hd, HIDDEN))
    out[f'{bv}MultiHeadDotProductAttention_0/out/bias'] = sd[f'{hf}attention.output.dense.bias']
    for bv_name, hf_name in (('LayerNorm_0', 'layernorm_before'),
                             ('LayerNorm_1', 'layernorm_after')):
      out[f'{bv}{bv_name}/scale'] = sd[f'{hf}{hf_name}.weight']
      out[f'{bv}{bv_name}/bias'] = sd[f'{hf}{hf_name}.bias']
    for bv_name, hf_name in (('Dense_0', 'intermediate.dense'), ('Dense_1', 'output.dense')):
      out[f'{bv}MlpBlock_0/{bv_name}/kernel'] = sd[f'{hf}{hf_name}.weight'].T
      out[f'{bv}MlpBlock_0/{bv_name}/bias'] = sd[f'{hf}{hf_name}.bias']
  np.savez(path, **out)


@pytest.mark.parametrize('old_layout', [False, True])
def test_big_vision_vit_matches_transformers(tmp_path, old_layout):
  """A big_vision .npz (tanh-GELU, eps 1e-6: flax's defaults) gives the same hidden states
  as the transformers ViT it was written from (hidden_act gelu_pytorch_tanh)."""
  torch.manual_seed(2)
  hf_model = transformers.ViTForImageClassification(transformers.ViTConfig(
      hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
      intermediate_size=MLP, image_size=32, patch_size=16, num_labels=3, layer_norm_eps=1e-6,
      hidden_act='gelu_pytorch_tanh', hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)).eval()
  with torch.no_grad():
    for name, p in hf_model.named_parameters():
      if 'layernorm' in name or name.endswith('bias') or 'token' in name:
        p.add_(0.1 * torch.randn_like(p))
  big_vision_npz(hf_model, tmp_path / 'vit.npz', old_layout)
  config = model_testlib.tiny_config('image_only', hidden=HIDDEN, heads=HEADS, mlp_dim=MLP,
                                     encoder_layers=LAYERS, gelu_approximate=True)
  config.modality.image.embed_norm = False
  batch = model_testlib.random_batch(config, 3, present_prob=1.0, seed=7)
  model, params = init_params(config, batch)
  params, report = public_checkpoints.load('big_vision_vit', str(tmp_path / 'vit.npz'), params,
                                           config)
  assert set(report.skipped) == {'head/kernel', 'head/bias'}
  assert 'embedders_image/finish/cls' in report.mapped
  out = jax.jit(lambda p, b: model.apply({'params': p}, b, heads=False))(params, batch)
  pixels = batch['image']['pixels'].astype(np.float32) / 127.5 - 1.0
  with torch.no_grad():
    hidden = hf_model.vit(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2)).last_hidden_state
  np.testing.assert_allclose(out['tokens']['image'], hidden.numpy(), atol=1e-5, rtol=1e-5)


def test_single_stream_takes_bert_as_its_fusion_transformer(bert_dir):
  """VisualBERT / UNITER: BERT's layers are the one transformer; with no image and a zero
  modality-type embedding the text tokens are BERT's hidden states."""
  path, hf_model = bert_dir
  config = m5_config(('image', 'text'))
  config.model.fusion = 'single_stream'
  config.model.update(encoder_layers=0, fusion_layers=LAYERS)
  batch = model_testlib.random_batch(config, 3, seed=8,
                                     present={'image': np.zeros(3, bool), 'text': np.ones(3, bool)})
  model, params = init_params(config, batch)
  params, report = public_checkpoints.load('hf_bert', str(path), params, config)
  assert 'fusion/transformer/layer_1/attention/query/kernel' in report.mapped
  assert not any(t.startswith('encoders_') for t in report.mapped)
  params['fusion']['type_embedding']['embedding'] = np.zeros_like(
      params['fusion']['type_embedding']['embedding'])
  out = jax.jit(lambda p, b: model.apply({'params': p}, b, heads=False))(params, batch)
  assert_tokens_are_berts(hf_model, out, batch, 'text')
