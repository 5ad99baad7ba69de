r"""python -m m5_jax.benchmark_matrix --config configs/matrix.py --workdir /tmp/m5_matrix --parallel 2

The benchmark matrix on M5Product-mini (m5_jax/benchmark_matrix.py): every
method and modality set of the paper's tables pretrained at a small budget,
each fine-tuned for classification, all scored by the eval binaries.

Config args (after ':'):
  size=default|smoke   default: the budget that fits 60 min on 2 idle cores;
                       smoke: a few-minute check of the whole chain (tiny mini,
                       a handful of steps, three cells)

Knobs (override with --config.a.b=value; a changed knob of a finished cell does
NOT re-run it: use a new --workdir or delete WORKDIR/cells/<cell>):
  data.*       mini's size and seed, the media form ('features': detector regions,
               S3D, mel; far cheaper on CPU than raw pixels)
  pretrain.*   model size, steps, batch, lr, feature used by the eval binaries
  finetune.*   classification fine-tuning of each cell (its backbone also gives
               the 'fine-tuned' retrieval and clustering numbers)
  cells.*      the modality sets of Table 1 (sequence) and Table 2 (combinations),
               the methods of Table 3, and the extra seeds that measure the noise
  eval.*       which eval binaries run on the pretrained and fine-tuned weights
"""
import ml_collections

from m5_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, size='default')
  if args.size not in ('default', 'smoke'):
    raise config_lib.ConfigError(f"config argument size must be default or smoke, got "
                                 f"{args.size!r}")
  config = ml_collections.ConfigDict()
  config.args = args

  config.data = ml_collections.ConfigDict(dict(
      num_products=5000,       # mini's eval splits grow with it (cls_test, coarse_query)
      seed=0,
      form='features',         # 'features' | 'raw'
      # How audio is tokenised (m5_jax/modalities/audio.py); both read the same 80 x 751
      # log-mel. 'features' (80 mel-bin rows as tokens) left the model's audio vector the
      # weakest (m5_mmt-tipva: A coarse mAP@10 26.1; cell m5_mmt-ta: T+A 24.6) although
      # audio is mini's strongest input (no model: 78.4); 'raw' (time patches of 16
      # frames x 80 bins) gave A 79.0, T+A 79.4 (benchmarks/results/matrix.md).
      audio_form='raw',
      vocab_size=8000,
  ))
  config.pretrain = ml_collections.ConfigDict(dict(
      size='tiny',             # m5_jax/models/sizes.py
      steps=300,
      batch_size=16,
      lr=3e-3,
      warmup_fraction=0.1,
      feature='encoder_pooled',  # model output the eval binaries score (docs/models.md)
      overrides=(),            # extra '--config.x=y' strings for every pretraining run
  ))
  config.finetune = ml_collections.ConfigDict(dict(
      enabled=True,
      # 100 steps (about 3.5 epochs of cls_train at 3000 products) left every cell at
      # the majority class; 300 steps at 1e-3 beat 1e-4, 3e-4 and 3e-3 and a 0.1x
      # backbone lr on m5_mmt-ti (benchmarks/results/matrix.md, 'Fine-tuning recipe').
      steps=300,
      batch_size=16,
      lr=1e-3,
      hidden=256,              # the paper's head is 1024 wide; tiny backbones are 64 wide
  ))
  config.cells = ml_collections.ConfigDict(dict(
      # Table 1: modalities added one at a time (M5-MMT), in the paper's order.
      sequence=('t', 'ti', 'tip', 'tipv', 'tipva'),
      sequence_method='m5_mmt',
      # Table 2: the pairs and triples not already in the sequence.
      combinations=('tp', 'ip', 'tv', 'ta', 'tiv', 'tia'),
      # Table 3: every method on image+text (image_only/text_only on their one modality).
      methods=('image_only', 'text_only', 'clip', 'single_stream', 'dual_stream', 'capture',
               'm5_mmt', 'scale'),
      method_modalities='ti',
      # Noise: these cells are run again with these seeds (model init and data order).
      noise_cells=('m5_mmt-ti',),
      noise_seeds=(1,),
      # These cells also score each modality alone (for 'text dominates').
      per_modality_cells=('m5_mmt-tipva',),
      # These cells are also scored at their initialisation (random weights).
      random_cells=('m5_mmt-tipva',),
  ))
  config.eval = ml_collections.ConfigDict(dict(
      pretrained_tasks=('coarse_retrieval', 'classification', 'clustering'),
      finetuned_tasks=('coarse_retrieval', 'classification', 'clustering'),
      methods_only_tasks=('clustering',),  # only Table 3 shows NMI and purity
      batch_size=64,
  ))

  if args.size == 'smoke':
    config.data.num_products = 300
    config.data.vocab_size = 1000
    config.pretrain.steps = 4
    config.pretrain.batch_size = 8
    config.finetune.steps = 3
    config.finetune.batch_size = 8
    config.cells.sequence = ('t', 'ti')
    config.cells.combinations = ()
    config.cells.methods = ('clip',)
    config.cells.noise_cells = ()
    config.cells.per_modality_cells = ('m5_mmt-ti',)
    config.cells.random_cells = ('m5_mmt-ti',)
  return config
