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
