"""python -m m5_jax.train --config configs/clip_init.py:clip=/data/clip-vit-base-patch16 --workdir /tmp/m5_clip_init

The CLIP baseline as CLIP starts: both towers of the clip preset from a public CLIP
in the Hugging Face layout (config.json + model.safetensors or pytorch_model.bin of
transformers' CLIPModel; preprocessor_config.json's image_mean / image_std if there).
configs/clip.py is the from-scratch one. What this sets from the folder
(m5_jax/models/public_checkpoints/hf_clip.py says why each is needed):

  model.hidden / heads / mlp_dim            the text tower's; pre-LN, its activation
                                            (quick_gelu) and LayerNorm eps
  modality.image.hidden / heads / mlp_dim   the vision tower's (CLIP's towers differ in width)
  modality.{text,image}.encoder_layers      each tower's depth
  model.projection_dim                      CLIP's projections: the retrieval vectors' width
  modality.text                             causal, pool=last (the end token), add_eos,
                                            no embedding LayerNorm, max_len <= its positions
  modality.image                            image_size, patch_size, input_norm (pre_layrnorm),
                                            pool=token, no embedding LayerNorm (form=raw)
  vocab_size                                CLIP's + 3 (m5_jax's [PAD] [UNK] [MASK])
  init_from.{path, format=hf_clip}
  input.tokenizer = <clip>/vocab.json       CLIP's byte-level BPE (with merges.txt), ids in
                                            m5_jax's order, when the folder has them

Without vocab.json the text is tokenised by config.input.tokenizer (the project's
sentencepiece model): its ids then index CLIP's token rows as if they were CLIP's.

Args: clip (the folder; required unless runlocal, where --config.init_from.path
must then name one), and those of configs/common.py.
"""
import os

from configs import common


def get_config(arg=None):
  config = common.get_config('clip', arg, clip='')
  clip = common.public_checkpoint(config, 'hf_clip', 'CLIP', 'config.json, model.safetensors',
                                  'clip_model_config')
  if clip is None:
    return config
  path = config.args.clip
  text, image = clip['text'], clip['image']
  config.model.update(hidden=text['hidden'], heads=text['heads'], mlp_dim=text['mlp_dim'],
                      pre_ln=True, activation=clip['activation'],
                      layer_norm_eps=clip['layer_norm_eps'], vocab_size=clip['vocab_size'],
                      projection_dim=clip['projection_dim'])
  with config.modality.text.unlocked():
    config.modality.text.update(
        vocab_size=clip['vocab_size'], encoder_layers=text['layers'], causal=True, pool='last',
        embed_norm=False, add_eos=True,
        max_len=min(config.modality.text.max_len, text['max_positions']))
  with config.modality.image.unlocked():
    config.modality.image.update(
        hidden=image['hidden'], heads=image['heads'], mlp_dim=image['mlp_dim'],
        encoder_layers=image['layers'], image_size=image['image_size'],
        patch_size=image['patch_size'], input_norm=True, pool='token', embed_norm=False)
  vocab = os.path.join(path.rstrip('/'), 'vocab.json')
  if os.path.exists(os.path.expanduser(vocab)):
    config.input.tokenizer = vocab
  return config
