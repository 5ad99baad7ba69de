"""Defaults shared by every method config: `get_config(method, arg)`.

Config args (after ':' in `--config configs/<method>.py:ARGS`):

  size=tiny|small|base|large    model size (m5_jax/models/sizes.py)
  modalities=itpva              one-letter codes: t text, p table, i image, v video, a audio
                                (default: the method's own set)
  form=raw|features             input form of the media modalities (default raw)
  batch_size=N                  global batch size (default 256; runlocal 8)
  vocab_size=N                  the tokenizer's vocabulary: sets model.vocab_size and
                                every text-like modality's vocab_size (default 8000)
  runlocal                      a tiny CPU smoke run on M5Product-mini as the README
                                builds it (/tmp/tfds, /tmp/m5mini/spm.model): size tiny,
                                batch 8, 20 steps, checkpoints every 10, log every step

Every field can then be overridden with `--config.a.b=value` (m5_jax/config_lib.py).
Durations are `<name>_steps | <name>_epochs | <name>_examples` (one of them set; an
override of one clears the others): total_*, schedule.warmup_*, checkpoint.every_*,
log.every_*.
"""
from __future__ import annotations

import ml_collections

from m5_jax import config_lib
from m5_jax.models import presets

MEDIA = ('image', 'video', 'audio')
# runlocal's data: where the README's M5Product-mini commands put it (make_mini
# --out /tmp/m5mini, tfds build --data_dir /tmp/tfds, tokenizer --out below).
MINI_DATA_DIR = '/tmp/tfds'
MINI_TOKENIZER = '/tmp/m5mini/spm.model'


def duration(prefix: str, steps=None, epochs=None, examples=None) -> dict:
  return {f'{prefix}_steps': steps, f'{prefix}_epochs': epochs, f'{prefix}_examples': examples}


def public_checkpoint(config: ml_collections.ConfigDict, init_format: str, name: str,
                      files: str, reader: str) -> dict | None:
  """configs/<arg>_init.py's start: points config.init_from at the public checkpoint
  folder config.args.<arg> (arg = name.lower(), e.g. bert) and returns
  public_checkpoints.<reader>(folder), its config.json's dims; None with no folder
  under runlocal (--config.init_from.path then names one). A missing or unreadable
  folder is a one-line ConfigError naming the Hugging Face `files` it needs."""
  arg = name.lower()
  path = config.args[arg]
  config.init_from.format = init_format
  config.init_from.path = path
  if not path:
    if not config.args.runlocal:
      raise config_lib.ConfigError(f'configs/{arg}_init.py needs {arg}=DIR, a {name} folder in '
                                   f'the Hugging Face layout ({files})')
    return None
  from m5_jax.models import public_checkpoints  # pylint: disable=g-import-not-at-top
  try:
    return getattr(public_checkpoints, reader)(path)
  except (OSError, KeyError, ValueError) as e:
    raise config_lib.ConfigError(f'{arg}={path}: no readable {name} config.json ({e})') from None


def get_config(method_name: str | None, arg: str | None, **extra_args) -> ml_collections.ConfigDict:
  """The full config of `method_name` (a models.presets name) for the config args `arg`.

  `extra_args` are further config args with their defaults (kept in config.args);
  with method_name=None the method comes from the `method` arg.
  """
  args = config_lib.parse_arg(arg, size='base', modalities='', form='raw', batch_size=256,
                              vocab_size=8000, runlocal=False, **extra_args)
  config_lib.validate_args(args)  # size, form, modalities, batch_size: m5_jax/config_lib.SCHEMA
  method = method_name or args.method
  if args.runlocal:
    args.size = 'tiny' if 'size=' not in (arg or '') else args.size
    args.batch_size = 8 if 'batch_size=' not in (arg or '') else args.batch_size

  config = presets.full_config(method, args.size, args.modalities or None)
  config.args = args
  config.task = 'pretrain'
  config.model.vocab_size = args.vocab_size
  # Speed options (each measured A/B against the PyTorch peer: benchmarks/RESULTS.md).
  config.model.activation = 'gelu'      # gelu (exact erf, BERT's) | gelu_tanh
  config.model.attention = 'einsum'     # einsum | dot_product (jax.nn.dot_product_attention)
  config.model.dropout_rng = 'threefry'  # threefry | rbg | unsafe_rbg | hash (objectives.py)
  config.model.dropout_bits = 32        # 32 (flax's nn.Dropout) | 16: 3x less PRNG work (m5_jax/dropout.py)
  config.model.heads_at = 'all'         # all | masked: MLM/feature heads at masked rows only
  for m in config.modality.values():
    if 'vocab_size' in m:
      m.vocab_size = args.vocab_size
  for m in MEDIA:
    if m in config.modality and 'form' in config.modality[m]:
      config.modality[m].form = args.form
  if 'audio' in config.modality:
    # Both audio forms read the same 80 x 751 log-mel; 'raw' tokenises it into time
    # patches, 'features' into the 80 mel-bin rows. Time patches keep the spectrum:
    # on mini the five-modality model's audio vector scored coarse mAP@10 79.0 with
    # them vs 26.1 with mel-bin rows (benchmarks/results/matrix.md), so they are the
    # default in both forms (--config.modality.audio.form=features for the rows).
    config.modality.audio.form = 'raw'

  config.input = ml_collections.ConfigDict(dict(
      dataset=f'm5product/{args.form}',
      data_dir='~/tensorflow_datasets',
      tokenizer='',                    # sentencepiece .model (python -m data_prep.tokenizer)
      train_split='pretrain',
      batch_size=args.batch_size,      # global, over all processes
      num_train_examples=None,         # epoch size when the source cannot tell
      read_workers=0,                  # >0: records read in worker processes, off this
                                       # process's GIL (m5_jax/record_reader.py)
  ))
  config.update(duration('total', steps=100_000))
  config.num_microbatches = 1          # gradient accumulation
  config.nonfinite = 'stop'            # 'stop' | 'skip'

  config.optimizer = ml_collections.ConfigDict(dict(
      name='adamw', lr=1e-4, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.01,
      no_decay=r'(bias|scale|embedding|contrastive_log_scale|contrastive_bias)$',
      grad_clip_norm=1.0, lr_multipliers=(), freeze=''))
  config.schedule = ml_collections.ConfigDict(dict(
      name='cosine', end_lr_factor=0.0, **duration('warmup', steps=5_000)))

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding = ml_collections.ConfigDict(dict(rules='fsdp', activation_constraints=False))
  config.checkpoint = ml_collections.ConfigDict(dict(
      keep=3, keep_every=0, async_save=True, **duration('every', steps=2_000)))
  config.log = ml_collections.ConfigDict(dict(
      peak_flops_per_device=0.0,       # e.g. 989e12 (H100 bf16) for an MFU estimate
      profile_steps=(0, 0),            # (first step, number of steps) to trace
      **duration('every', steps=100)))
  # path: another run's workdir (format m5_jax), or a public checkpoint: format hf_bert |
  # hf_vit | big_vision_vit | hf_clip fills `towers` (comma-separated; '' = text and table |
  # image | image | text and image) from a Hugging Face BERT, ViT or CLIP folder or a
  # big_vision .npz (m5_jax/models/public_checkpoints/).
  config.init_from = ml_collections.ConfigDict(dict(
      path='', step=-1, include='.*', exclude='', into='', format='m5_jax', towers=''))

  if args.runlocal:
    config.input.data_dir = MINI_DATA_DIR
    config.input.tokenizer = MINI_TOKENIZER
    config.update(duration('total', steps=20))
    config.schedule.warmup_steps = 2
    config.optimizer.lr = 1e-3
    config.checkpoint.every_steps = 10
    config.log.every_steps = 1
  return config
