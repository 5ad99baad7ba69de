"""Classification: a linear probe on frozen features, or a fine-tuned checkpoint's head.

    python -m m5_jax.evaluate.classification --workdir DIR [--step N | --all | --watch] \
        [--subsets T,I,IT,all]             # linear probe on frozen features
    python -m m5_jax.evaluate.classification --workdir FINETUNE_DIR [--finetuned]
                                           # top-1 of the fine-tuned model's own head
                                           # (chosen automatically for such a workdir)

Linear probe: multinomial logistic regression on cls_train features of each
modality set (sum of the present modality vectors, standardised with the train
statistics), scored top-1 on cls_test. Its classes are the distinct known labels
of cls_train and cls_test (`ClassIndex`): labels are int64 ids, 12-digit or 62-bit
hashes, never sized as max(label) + 1. It is trained in JAX with optax (AdamW,
cosine decay, weight decay as the L2 penalty, mini-batches sampled on device)
rather than scikit-learn: with ~6k classes and ~1M items, sklearn's multinomial
L-BFGS runs for hours on CPU, while this is a few thousand small matmuls on an
accelerator. Items with none of the set's modalities are not classified and are
counted (`test_without_features`).

Fine-tuned: the workdir of the training binary's classification fine-tuning mode
(head: concat of modality vectors -> 1024 -> dropout -> classes); its logits on
cls_test are scored directly.

Outputs in <workdir>/eval/classification/: step_<N>.json (accuracy with its 95%
bootstrap interval over the test items, mean class accuracy, per-class accuracy),
step_<N>.npz (per test item: 'unit', its cls_test row, and 'correct'),
results.md, TensorBoard scalars and long_tail.png (per-class accuracy, classes
sorted by training frequency).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m5_jax import checkpointing
from m5_jax import config_lib
from m5_jax.evaluate import features as features_lib
from m5_jax.evaluate import metrics as metrics_lib
from m5_jax.evaluate import model_features
from m5_jax.evaluate import plots
from m5_jax.evaluate import results_io
from m5_jax.evaluate import runner
from m5_jax.evaluate import tables

TASK = 'classification'


@dataclasses.dataclass(frozen=True)
class ClassIndex:
  """Dense class indices 0..C-1 for the category labels of a probe.

  Labels are int64 ids, not class indices: 12-digit release ids or 62-bit hashes
  of text labels (data_prep/m5product/README.md), so `max(label) + 1` classes
  could be billions. Class i is the i-th smallest distinct known label.
  """
  labels: np.ndarray  # int64[C], sorted distinct known labels

  @classmethod
  def of(cls, *label_arrays: np.ndarray) -> 'ClassIndex':
    """The distinct known labels (>= 0; -1 is unknown) of all the arrays."""
    every = np.concatenate([np.asarray(a, np.int64).ravel() for a in label_arrays])
    return cls(np.unique(every[every >= 0]))

  @property
  def num_classes(self) -> int:
    return len(self.labels)

  def encode(self, labels: np.ndarray) -> np.ndarray:
    """label -> class index (int64); unknown (-1) or not one of `labels` -> -1."""
    labels = np.asarray(labels, np.int64)
    if not self.num_classes:
      return np.full(labels.shape, -1, np.int64)
    position = np.minimum(np.searchsorted(self.labels, labels), self.num_classes - 1)
    return np.where((labels >= 0) & (self.labels[position] == labels), position, -1)

  def decode(self, classes: np.ndarray) -> np.ndarray:
    """class index -> label."""
    return self.labels[np.asarray(classes, np.int64)]


@dataclasses.dataclass
class Probe:
  mean: np.ndarray
  scale: np.ndarray
  weights: np.ndarray  # [D, C]
  bias: np.ndarray     # [C]


@functools.partial(jax.jit, static_argnames=('num_classes', 'num_steps', 'batch_size'))
def _train(x, y, rng, *, num_classes, num_steps, batch_size, learning_rate, weight_decay):
  optimizer = optax.adamw(optax.cosine_decay_schedule(learning_rate, num_steps),
                          weight_decay=weight_decay)
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}

  def loss_fn(params, xb, yb):
    logits = xb @ params['w'] + params['b']
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def step(carry, key):
    params, opt_state = carry
    idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
    grads = jax.grad(loss_fn)(params, x[idx], y[idx])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)),
                                jax.random.split(rng, num_steps))
  return params


def linear_probe(x: np.ndarray, y: np.ndarray, num_classes: int, *, seed: int = 0,
                 epochs: int = 30, min_steps: int = 300, batch_size: int = 1024,
                 learning_rate: float = 1e-2, weight_decay: float = 1e-4) -> Probe:
  """Fits a standardised multinomial logistic regression on (x, y)."""
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.int32)
  if len(x) == 0:
    raise ValueError('linear probe: no training example with features and a label')
  mean, scale = x.mean(0), x.std(0) + 1e-6
  batch_size = int(min(batch_size, len(x)))
  num_steps = int(max(min_steps, epochs * len(x) // batch_size))
  params = _train(jnp.asarray((x - mean) / scale), jnp.asarray(y), jax.random.key(seed),
                  num_classes=int(num_classes), num_steps=num_steps, batch_size=batch_size,
                  learning_rate=learning_rate, weight_decay=weight_decay)
  return Probe(mean, scale, np.asarray(params['w']), np.asarray(params['b']))


def predict(probe: Probe, x: np.ndarray, block: int = 65536) -> np.ndarray:
  """Top-1 class per row of x."""
  out = []
  for lo in range(0, len(x), block):
    z = (np.asarray(x[lo:lo + block], np.float32) - probe.mean) / probe.scale
    out.append(np.argmax(z @ probe.weights + probe.bias, axis=1))
  return np.concatenate(out) if out else np.zeros((0,), np.int64)


def scored_accuracy(predictions: np.ndarray, labels: np.ndarray, rows: np.ndarray
                    ) -> tuple[dict, dict[str, np.ndarray]]:
  """(accuracy metrics with the 95% interval, per-item units) of the known-label items.

  rows: each prediction's row in the test split (the unit a paired comparison
  matches on).
  """
  known = np.asarray(labels) >= 0
  correct = np.asarray(predictions)[known] == np.asarray(labels)[known]
  metrics = metrics_lib.with_intervals(metrics_lib.accuracy(predictions, labels),
                                       metrics_lib.bootstrap_means({'accuracy': correct}))
  return metrics, {'unit': np.asarray(rows, np.int64)[known], 'correct': correct}


def probe_set(train: features_lib.SplitFeatures, test: features_lib.SplitFeatures,
              subset, classes: ClassIndex, *, normalize: str, seed: int, fusion: str = 'sum'
              ) -> tuple[dict, dict, dict[str, np.ndarray]]:
  """(metrics, per-class accuracy, per-item units) of a linear probe on one modality set.

  The probe has one output per class of `classes`; predictions and per-class
  accuracy are in the original labels.
  """
  means = train.modality_means()  # 'center': both splits centred on the training split
  tr = train.combine(subset, normalize, means, fusion)
  te = test.combine(subset, normalize, means, fusion)
  rows = tr.has_any & (train.label >= 0)
  probe = linear_probe(tr.features[rows], classes.encode(train.label[rows]),
                       classes.num_classes, seed=seed)
  scored = te.has_any & (test.label >= 0)
  predictions = classes.decode(predict(probe, te.features[scored]))
  metrics, units = scored_accuracy(predictions, test.label[scored], np.flatnonzero(scored))
  metrics['train_examples'] = int(rows.sum())
  metrics['test_without_features'] = int((~te.has_any & (test.label >= 0)).sum())
  return metrics, metrics_lib.per_class_accuracy(predictions, test.label[scored]), units


def _write(options, step, results, per_class, train_labels, title):
  results = results_io.with_saved_rows(options.workdir, TASK, step, results, options.variant)
  results_io.write_step(options.workdir, TASK, step, results, tables.markdown_table(
      ['Modalities', 'Acc', 'mean class Acc', 'test items', 'without features', 'eval set'],
      [[label, tables.metric_ci(m, 'accuracy'), m['mean_class_accuracy'], m['num_examples'],
        m.get('test_without_features', 0), tables.eval_set_flag(m)]
       for label, m in results['sets'].items()]), options.variant)
  labels, counts = np.unique(train_labels[train_labels >= 0], return_counts=True)
  plots.plot_long_tail(per_class, {int(c): int(n) for c, n in zip(labels, counts)},
                        os.path.join(runner.output_dir(options.workdir, TASK, options.variant),
                                     'long_tail.png'),
                        title=f'{title}, step {step}')


def run(options: runner.Options, config, extra) -> list[int]:
  embedder = model_features.Embedder(options.workdir, config,
                                     batch_size=options.batch_size or None,
                                     feature=options.feature)
  available = tuple(config.modalities)
  subsets = features_lib.parse_subsets(options.subsets, available)

  def evaluate_probe(step: int) -> None:
    embedder.restore(step)
    store = embedder.store()
    train, test = store.get('cls_train'), store.get('cls_test')
    classes = ClassIndex.of(train.label, test.label)
    results = {'sets': {}, 'num_classes': classes.num_classes, 'per_class': {},
               'mode': 'linear_probe', 'units': {},
               'bootstrap': metrics_lib.bootstrap_settings('cls_test item')}
    for subset in subsets:
      label = features_lib.subset_label(subset)
      metrics, per_class, units = probe_set(train, test, subset, classes,
                                            normalize=options.normalize, seed=options.seed,
                                            fusion=options.fusion)
      results['sets'][label], results['per_class'][label] = metrics, per_class
      results['units'][label] = units
      logging.info('%s linear probe: accuracy %.2f %s', label, metrics['accuracy'],
                   metrics['ci95']['accuracy'])
    _write(options, step, results, per_class, train.label, f'linear probe {label}')

  @functools.cache
  def train_labels() -> np.ndarray:  # read once, not at every step evaluated
    return model_features.read_labels(config, 'cls_train')

  def evaluate_finetuned(step: int) -> None:
    embedder.restore(step)
    predictions, labels = embedder.classify('cls_test')
    label = 'finetuned ' + features_lib.subset_label(available)
    metrics, units = scored_accuracy(predictions, labels, np.arange(len(labels)))
    # The head's classes are the label values themselves (finetune.py): a label
    # outside [0, num_classes) was never trained on and is always scored wrong.
    outside = int(((labels >= 0) & (labels >= config.finetune.num_classes)).sum())
    metrics['test_labels_outside_head'] = outside
    if outside:
      logging.warning('%d of %d cls_test labels are not class indices of the %d-class head '
                      '(configs/classification.py: labels must lie in [0, num_classes)); '
                      'they count as wrong', outside, int((labels >= 0).sum()),
                      config.finetune.num_classes)
    results = {'sets': {label: metrics}, 'mode': 'finetuned', 'units': {label: units},
               'per_class': {label: metrics_lib.per_class_accuracy(predictions, labels)},
               'bootstrap': metrics_lib.bootstrap_settings('cls_test item')}
    _write(options, step, results, results['per_class'][label], train_labels(), label)

  finetuned = extra['finetuned'] or model_features.is_finetuned(config)
  if extra['finetuned'] and not model_features.is_finetuned(config):
    raise config_lib.ConfigError(f"--finetuned needs a fine-tuning workdir (config.task = "
                                 f"'{model_features.FINETUNE_TASK}'); {options.workdir} is not one")
  final_step = config.get('total_steps', None)
  return runner.run(TASK, options, lambda: checkpointing.list_steps(options.workdir),
                    evaluate_finetuned if finetuned else evaluate_probe,
                    final_step=final_step if isinstance(final_step, int) else None)


def main(argv):
  runner.main(TASK, argv, run, extra_flags={'finetuned': False})


if __name__ == '__main__':
  main(sys.argv[1:])
