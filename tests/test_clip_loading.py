"""A tiny random transformers CLIPModel, saved with save_pretrained, loaded into both towers
of the clip preset gives the reference's text and image embeddings at 1e-5 (fp32)."""
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

VOCAB, MAX_POS, PROJECTION = 99, 16, 24
TEXT = dict(hidden=32, heads=2, mlp_dim=64)
VISION = dict(hidden=48, heads=3, mlp_dim=96)  # CLIP's towers differ in width
LAYERS = 2
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]  # preprocessor_config.json's, not OpenAI's


@pytest.fixture(scope='module')
def clip_dir(tmp_path_factory):
  torch.manual_seed(0)
  hf_config = transformers.CLIPConfig(
      text_config=dict(vocab_size=VOCAB, hidden_size=TEXT['hidden'], num_hidden_layers=LAYERS,
                       num_attention_heads=TEXT['heads'], intermediate_size=TEXT['mlp_dim'],
                       max_position_embeddings=MAX_POS, bos_token_id=VOCAB - 2,
                       eos_token_id=VOCAB - 1, pad_token_id=1),
      vision_config=dict(hidden_size=VISION['hidden'], num_hidden_layers=LAYERS,
                         num_attention_heads=VISION['heads'],
                         intermediate_size=VISION['mlp_dim'], image_size=32, patch_size=16),
      projection_dim=PROJECTION)
  model = transformers.CLIPModel(hf_config).eval()
  with torch.no_grad():  # non-trivial LayerNorms and biases (init leaves them at 1 / 0)
    for name, p in model.named_parameters():
      if 'norm' in name or name.endswith('bias') or 'class_embedding' in name:
        p.add_(0.1 * torch.randn_like(p))
    model.logit_scale.fill_(2.5)
  path = tmp_path_factory.mktemp('clip')
  model.save_pretrained(path)
  (path / 'preprocessor_config.json').write_text(json.dumps({'image_mean': MEAN,
                                                             'image_std': STD}))
  return path, model


def clip_config(**image_overrides):
  """The clip preset shaped as the checkpoint (what configs/clip_init.py sets)."""
  config = model_testlib.tiny_config(
      'clip', ('image', 'text'), **TEXT, encoder_layers=LAYERS, pre_ln=True, layer_norm_eps=1e-5,
      activation='quick_gelu', projection_dim=PROJECTION, vocab_size=VOCAB + 3)
  config.modality.text.update(vocab_size=VOCAB + 3, causal=True, pool='last', embed_norm=False,
                              add_eos=True)
  config.modality.image.update(**VISION, input_norm=True, pool='token', embed_norm=False)
  config.modality.image.update(image_overrides)
  return config


def text_batch(batch, rng):
  """BOS, ordinary ids, EOS, padding: what the input pipeline gives with add_eos."""
  ids, mask = batch['text']['ids'], batch['text']['mask']
  size, length = ids.shape
  lengths = rng.integers(3, length + 1, size=size)
  pos = np.arange(length)[None]
  mask[:] = pos < lengths[:, None]
  ids[:] = np.where(mask, rng.integers(5, VOCAB + 3, size=ids.shape), 0)
  ids[:, 0] = 2
  ids[np.arange(size), lengths - 1] = 3
  batch['text']['present'][:] = True
  return batch


def load(path, config, seed=3, **kwargs):
  batch = model_testlib.random_batch(config, 3, present_prob=1.0, seed=seed)
  text_batch(batch, np.random.default_rng(seed))
  model = models.build(config)
  params = jax.tree.map(np.asarray, nn.unbox(model_testlib.random_params(model, batch, seed=1)))
  params, report = public_checkpoints.load('hf_clip', str(path), params, config, **kwargs)
  return model, params, report, batch


def test_clip_towers_match_transformers(clip_dir):
  path, hf_model = clip_dir
  config = clip_config()
  model, params, report, batch = load(path, config)
  out = jax.jit(lambda p, b: model.apply({'params': p}, b, heads=False))(params, batch)

  order = public_checkpoints.hf_clip.clip_vocab_order(VOCAB, VOCAB - 2, VOCAB - 1)
  ids, mask = batch['text']['ids'], batch['text']['mask']
  pixels = batch['image']['pixels'].astype(np.float32) / 255.0
  pixels = (pixels - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
  with torch.no_grad():
    text = hf_model.get_text_features(input_ids=torch.tensor(order[ids]),
                                      attention_mask=torch.tensor(mask, dtype=torch.long))
    image = hf_model.get_image_features(
        pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2)).pooler_output.numpy()
  np.testing.assert_allclose(out['encoder_pooled']['text'], text.pooler_output.numpy(),
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out['encoder_pooled']['image'], image, atol=1e-5, rtol=1e-5)
  valid = mask[..., None]  # every token, not only the pooled one: the causal mask holds
  np.testing.assert_allclose(np.where(valid, out['tokens']['text'], 0),
                             np.where(valid, text.last_hidden_state.numpy(), 0),
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(params['contrastive_log_scale'], 2.5)
  assert np.abs(image[0] - image[1]).max() > 1e-2  # not vacuous

  # Every source tensor mapped or skipped; what stays new is the heads and SigLIP's bias.
  sources = {s for v in report.mapped.values() for s in v.split(' + ')}
  saved = set(public_checkpoints.read_hf_folder(str(path))[1])
  assert sources | set(report.skipped) == saved and not sources & set(report.skipped)
  assert all(p.startswith('heads_') or p == 'contrastive_bias' for p in report.new), report.new
  assert 'encoders_image/input_ln/scale' in report.mapped


def test_clip_one_tower_skips_the_other_by_name(clip_dir):
  path, _ = clip_dir
  _, _, report, _ = load(path, clip_config(), towers='image')
  assert not any(t.startswith(('encoders_text', 'projection_text', 'word_embed'))
                 for t in report.mapped)
  assert report.skipped['text_projection.weight'] == 'init_from.towers leaves the text tower out'


@pytest.mark.parametrize('change,message', [
    (lambda c: c.modality.image.update(hidden=24), '--config.modality.image.hidden=48 (got 24)'),
    (lambda c: c.modality.text.update(pool='mean'), '--config.modality.text.pool=last (got mean)'),
    (lambda c: c.model.update(activation='gelu'), '--config.model.activation=quick_gelu'),
    (lambda c: c.model.update(projection_dim=8), '--config.model.projection_dim=24 (got 8)'),
])
def test_mismatched_clip_model_is_one_line(clip_dir, change, message):
  path, _ = clip_dir
  config = clip_config()
  change(config)
  with pytest.raises(ValueError, match=message.replace('.', r'\.').replace('(', r'\(')
                     .replace(')', r'\)')) as e:
    load(path, config)
  assert '\n' not in str(e.value)


def test_other_folders_are_one_line(clip_dir, tmp_path):
  path, _ = clip_dir
  hf_config = json.loads((path / 'config.json').read_text())
  (tmp_path / 'config.json').write_text(json.dumps({**hf_config, 'model_type': 'bert'}))
  (tmp_path / 'model.safetensors').write_bytes((path / 'model.safetensors').read_bytes())
  config = clip_config()
  with pytest.raises(ValueError, match="init_from.format=hf_clip but config.json has "
                     "model_type='bert'"):
    load(tmp_path, config)
  with pytest.raises(FileNotFoundError, match='not a folder'):
    load(tmp_path / 'missing', config)
  # A tensor of the wrong shape names both sides; one CLIP does not have is named too.
  from safetensors import numpy as safetensors_numpy
  (tmp_path / 'config.json').write_text(json.dumps(hf_config))
  tensors = safetensors_numpy.load_file(str(path / 'model.safetensors'))
  tensors['visual_projection.weight'] = np.zeros((PROJECTION, 40), np.float32)
  safetensors_numpy.save_file(tensors, str(tmp_path / 'model.safetensors'))
  with pytest.raises(ValueError, match=r'^visual_projection\.weight \(24, 40\) does not fit '
                     r'projection_image/kernel \(48, 24\)$'):
    load(tmp_path, config)
  tensors = safetensors_numpy.load_file(str(path / 'model.safetensors'))
  tensors['vision_model.head.weight'] = np.zeros(3, np.float32)
  safetensors_numpy.save_file(tensors, str(tmp_path / 'model.safetensors'))
  with pytest.raises(ValueError, match=r'tensor vision_model\.head\.weight \(3,\) has no place'):
    load(tmp_path, config)


def test_train_starts_from_clip_through_init_from(clip_dir, tmp_path):
  """configs/clip_init.py: the step-0 checkpoint holds the CLIP tensors in both towers."""
  from m5_jax import checkpointing, config_lib, train
  path, _ = clip_dir
  config, _ = config_lib.parse_command_line(
      ['--config', f'configs/clip_init.py:size=tiny,batch_size=8,clip={path}',
       '--config.input.dataset=synthetic', '--config.total_steps=0',
       '--config.modality.text.max_len=12'], {})
  assert config.modality.image.hidden == VISION['hidden'] and config.model.hidden == TEXT['hidden']
  train.train(config, str(tmp_path))
  _, params = checkpointing.restore_params(str(tmp_path))
  params = jax.tree.map(np.asarray, params)
  values, report = public_checkpoints.convert('hf_clip', str(path), params, config)
  flat = public_checkpoints.flatten(params)
  assert {'projection_image/kernel', 'encoders_text/transformer/layer_1/mlp/wo/bias'} <= set(values)
  for name, value in values.items():
    np.testing.assert_array_equal(flat[name], value, err_msg=name)
  assert all(p.startswith('heads_') or p == 'contrastive_bias' for p in report.new)


def test_clip_init_config_needs_a_folder():
  from m5_jax import config_lib
  with pytest.raises(config_lib.ConfigError, match='needs clip=DIR'):
    config_lib.load_config('configs/clip_init.py:size=tiny')
  with pytest.raises(config_lib.ConfigError, match='no readable CLIP config.json'):
    config_lib.load_config('configs/clip_init.py:clip=/nonexistent')


def tiny_bpe_files(path, corpus, num_merges=40):
  """vocab.json + merges.txt as CLIP builds them (bytes, bytes + </w>, merges, specials),
  merges learnt greedily on `corpus` so that words really merge."""
  from m5_jax.models.public_checkpoints import clip_bpe
  chars = clip_bpe.byte_characters()
  words = [tuple(chars[b] for b in w.encode('utf-8')) for w in corpus.lower().split()]
  words = [w[:-1] + (w[-1] + '</w>',) for w in words]
  merges = []
  for _ in range(num_merges):
    counts = {}
    for w in words:
      for pair in zip(w, w[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    if not counts:
      break
    best = max(counts, key=lambda p: (counts[p], p))
    merges.append(best)
    merged = []
    for w in words:
      out, i = [], 0
      while i < len(w):
        if i + 1 < len(w) and (w[i], w[i + 1]) == best:
          out, i = out + [w[i] + w[i + 1]], i + 2
        else:
          out, i = out + [w[i]], i + 1
      merged.append(tuple(out))
    words = merged
  base = list(chars.values())
  pieces = base + [c + '</w>' for c in base] + [a + b for a, b in merges]
  pieces += ['<|startoftext|>', '<|endoftext|>']
  (path / 'vocab.json').write_text(json.dumps({p: i for i, p in enumerate(pieces)}))
  (path / 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(f'{a} {b}' for a, b in merges)
                                   + '\n', encoding='utf-8')
  return len(pieces)


def test_clip_bpe_matches_transformers(tmp_path):
  from m5_jax.models.public_checkpoints import clip_bpe, hf_clip
  corpus = ('red dress redder dresses 红色 连衣裙 红色连衣裙 phone case 手机壳 '
            "it's the reddest dress, 2024 new style") * 3
  size = tiny_bpe_files(tmp_path, corpus)
  reference = transformers.CLIPTokenizer(vocab=str(tmp_path / 'vocab.json'),
                                         merges=str(tmp_path / 'merges.txt'))
  ours = public_checkpoints.checkpoint_tokenizer(str(tmp_path / 'vocab.json'))
  assert isinstance(ours, clip_bpe.ClipBpeTokenizer) and ours.vocab_size == size + 3
  order = hf_clip.clip_vocab_order(size, size - 2, size - 1)
  strings = ['Red DRESS, 红色连衣裙 2024!', "It's  the\tREDDEST dresses...", '手机壳 phone-case',
             'ünïcode naïve café', '']
  for s in strings:
    want = reference(s, add_special_tokens=False)['input_ids']
    got = ours.encode([s])[0]
    assert [int(order[i]) for i in got] == want, s
  assert len(ours.encode(['red dress'])[0]) < len('red dress')  # merges happened


def test_text_preprocess_tokenises_with_the_clip_vocabulary(tmp_path):
  """config.input.tokenizer=<clip>/vocab.json and add_eos: BOS, CLIP's BPE ids, EOS."""
  import tensorflow as tf
  from m5_jax import input_pipeline, modalities
  size = tiny_bpe_files(tmp_path, 'red dress 红色 连衣裙 ' * 3)
  tokenizer = input_pipeline.load_tokenizer(str(tmp_path / 'vocab.json'))
  cfg = clip_config().modality.text
  cfg.update(vocab_size=size + 3, max_len=8)
  fields = modalities.get('text').preprocess(
      {'title': tf.constant('Red dress 红色连衣裙'), 'present': {'text': tf.constant(1)}}, cfg,
      tokenizer)
  ids = fields['ids'].numpy()[:fields['mask'].numpy().sum()]
  assert ids.tolist() == [2] + tokenizer.encode(['red dress 红色连衣裙'])[0][:6] + [3]
