"""python -m m5_jax.train --config configs/classification.py:method=m5_mmt,size=base,num_classes=6000 --workdir /tmp/m5_cls --config.init_from.path=/tmp/m5_m5_mmt

Full fine-tuning for category classification (the M5Product paper's head): the
pretrained model, then concat of its per-modality vectors -> 1024 -> GELU -> dropout ->
classes (m5_jax/finetune.py), trained with cross-entropy on the cls_train split.
The labels are the class indices, so they must lie in [0, num_classes) (M5Product-mini's
do); others are not trained on (finetune.py says why and what 12-digit labels need).
The backbone is initialised from the pretraining run in `init_from.path` (its
parameters go under 'backbone'; the head starts fresh). Score with
`python -m m5_jax.evaluate.classification --workdir /tmp/m5_cls`.

Args: method (the pretraining method, default m5_mmt), num_classes, and those of
configs/common.py.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  config = common.get_config(None, arg, method='m5_mmt', num_classes=0)
  config.task = 'classification_finetune'
  config.finetune = ml_collections.ConfigDict(dict(
      num_classes=config.args.num_classes, hidden=1024, dropout=0.1))
  config.input.train_split = 'cls_train'
  config.init_from.into = 'backbone'
  config.update(common.duration('total', epochs=None, steps=20_000))
  config.optimizer.lr = 3e-5
  config.schedule.warmup_steps = 1_000
  if config.args.runlocal:
    config.update(common.duration('total', steps=20))
    config.schedule.warmup_steps = 2
    config.optimizer.lr = 1e-3
  return config
