"""python -m m5_jax.train --config configs/bert_init.py:method=dual_stream,bert=/data/bert-base-chinese --workdir /tmp/m5_dual_bert

The paper's baselines as initialised in the paper: the text tower (and the table
tower, its own copy) starts from a public BERT in the Hugging Face layout
(config.json, model.safetensors or pytorch_model.bin, vocab.txt), as VisualBERT,
UNITER, ViLBERT and LXMERT start from BERT. The from-scratch configs are
configs/<method>.py. What this sets from the BERT folder:

  model.hidden / heads / mlp_dim / layer_norm_eps    the checkpoint's; post-LN, exact GELU (model.activation)
  vocab_size                                         the checkpoint's vocab.txt
  modality.{text,table}.encoder_layers               the checkpoint's depth (single_stream:
                                                     model.fusion_layers, the one transformer)
  input.tokenizer = <bert>/vocab.txt                 WordPiece in m5_jax's id order
  init_from.{path, format=hf_bert}                   m5_jax/models/public_checkpoints/

The model config is shared by every tower, so a method with media towers
(m5_mmt, scale, clip) gets BERT-style post-LN media towers too. Freeze or slow the
BERT towers with the optimizer options, e.g. --config.optimizer.freeze='^encoders_text/'
or --config.optimizer.lr_multipliers="(('^(word_embed|embedders_text|encoders_text)/', 0.1),)".

Args: method (default text_only), bert (the folder; required unless runlocal, where
--config.init_from.path must then name one), and those of configs/common.py.
"""
from configs import common


def get_config(arg=None):
  config = common.get_config(None, arg, method='text_only', bert='')
  config.model.update(pre_ln=False, activation='gelu')
  bert_config = common.public_checkpoint(config, 'hf_bert', 'BERT',
                                         'config.json, model.safetensors, vocab.txt',
                                         'bert_model_config')
  if bert_config is None:
    return config
  bert = config.args.bert
  config.model.update(hidden=bert_config['hidden'], heads=bert_config['heads'],
                      mlp_dim=bert_config['mlp_dim'],
                      layer_norm_eps=bert_config['layer_norm_eps'],
                      vocab_size=bert_config['vocab_size'])
  for m in ('text', 'table'):
    if m in config.modality:
      config.modality[m].vocab_size = bert_config['vocab_size']
      if config.model.fusion != 'single_stream':
        config.modality[m].encoder_layers = bert_config['layers']
  if config.model.fusion == 'single_stream':
    config.model.fusion_layers = bert_config['layers']
  config.input.tokenizer = f'{bert.rstrip("/")}/vocab.txt'
  return config
