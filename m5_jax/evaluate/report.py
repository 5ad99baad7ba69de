"""Evaluation outputs: JSON, TensorBoard, Markdown tables in the paper's layout, PNG plots.

Per task and step (written by process 0 only):
  <workdir>/eval/<task>/step_<N>.json      all numbers of that evaluation; each
                                           modality set's 'ci95' ({metric: [low,
                                           high]}, 95% bootstrap over the units)
                                           and 'too_small_to_separate_5_points'
  <workdir>/eval/<task>/step_<N>.npz       the per-unit values the intervals and
                                           paired comparisons resample, keyed
                                           '<set>/<name>': 'unit' (row of the eval
                                           split) and per-query 'm5_map@K', ...,
                                           per-item 'correct', or 'label'+'cluster'
  <workdir>/eval/<task>/results.md         its table(s) for the latest step evaluated
  <workdir>/eval/<task>/events.*           TensorBoard scalars '<set>/<metric>' (clu writer)
  <workdir>/eval/<task>/*.png              plots

Summaries (`python -m m5_jax.evaluate.report`):
  --workdir DIR [--step N]    the paper's modality-set table: rows = modality sets,
                              columns Acc, mAP@1/5/10, P@1/5/10 (M5Product metric);
  --compare name=DIR,...      the method comparison: Acc, mAP@1, NMI, Purity, then
                              each run against the first, paired on the same eval
                              items: difference [95% interval] win / tie / loss.
  --feature F --normalize N   the variant the eval binaries wrote with those flags;
                              without them, the variant found in the workdir(s) (the
                              demo's: feature=encoder_pooled), named in the first line.

Tables give each number with its 95% interval, `61.7 [55.2, 68.0]`, and an
'eval set' column that says 'too small' where an interval of mAP@10, Recall@10,
accuracy or NMI reaches more than 5 points either side of the estimate
(metrics.SEPARATION_POINTS): such a set cannot separate a 5-point difference.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from m5_jax.evaluate import metrics as metrics_lib
from m5_jax.evaluate import runner

PAPER_KS = (1, 5, 10)


# ----------------------------------------------------------------------------- JSON + TB


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(float(value)) else float(value)
  return value


def scalars(results: Mapping[str, Any]) -> dict[str, float]:
  """'<set>/<metric>' -> value for every numeric metric of results['sets']."""
  out = {}
  for label, metrics in results.get('sets', {}).items():
    for name, value in metrics.items():
      if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        out[f'{label}/{name}'] = float(value)
  return out


# Per-modality-set parts of a results dict: merged when a step is evaluated again
# with other --subsets (the new rows win), so no row is lost.
PER_SET_KEYS = ('sets', 'per_class', 'curves')


def merge_results(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
  """`new`, with the rows of `old`'s per-set parts that `new` does not have."""
  merged = dict(new)
  for key in PER_SET_KEYS:
    if isinstance(old.get(key), Mapping) and isinstance(new.get(key), Mapping):
      merged[key] = {**old[key], **new[key]}
  return merged


def step_path(workdir: str, task: str, step: int, variant: str = '') -> str:
  return os.path.join(runner.output_dir(workdir, task, variant), f'step_{step:08d}.json')


def units_path(json_path: str) -> str:
  """The per-unit values beside a step's JSON: step_<N>.npz."""
  return json_path[:-len('.json')] + '.npz'


def _write_units(path: str, units: Mapping[str, Mapping[str, np.ndarray]]) -> None:
  """Saves {set: {name: array}} as '<set>/<name>', keeping the file's other sets."""
  arrays = {}
  if os.path.isfile(path):
    with np.load(path) as old:
      arrays = {key: old[key] for key in old.files if key.rpartition('/')[0] not in units}
  for label, values in units.items():
    arrays.update({f'{label}/{name}': np.asarray(v) for name, v in values.items()})
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    np.savez_compressed(f, **arrays)
  os.replace(tmp, path)


def load_units(json_path: str) -> dict[str, dict[str, np.ndarray]]:
  """{set: {name: array}} saved beside a step's JSON ({} when there is none)."""
  path = units_path(json_path)
  if not os.path.isfile(path):
    return {}
  out: dict[str, dict[str, np.ndarray]] = {}
  with np.load(path) as saved:
    for key in saved.files:
      label, _, name = key.rpartition('/')
      out.setdefault(label, {})[name] = saved[key]
  return out


def with_saved_rows(workdir: str, task: str, step: int, results: Mapping[str, Any],
                    variant: str = '') -> dict[str, Any]:
  """`results` merged with the step's saved results of the same variant, if any.

  Evaluating a step again with other --subsets thus adds rows, never drops them.
  """
  path = step_path(workdir, task, step, variant)
  if not os.path.isfile(path):
    return dict(results)
  with open(path) as f:
    return merge_results(json.load(f), results)


def write_step(workdir: str, task: str, step: int, results: Mapping[str, Any],
               markdown: str = '', variant: str = '') -> str:
  """Writes step_<N>.json, step_<N>.npz, results.md and TensorBoard scalars.

  results['units'] ({set: {name: per-unit array}}), when present, goes to the
  .npz (merged with its other sets), not into the JSON. Returns the JSON path.
  """
  path = step_path(workdir, task, step, variant)
  results = dict(results)
  units = results.pop('units', None)
  if jax.process_index() != 0:
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if units:
    _write_units(units_path(path), units)
    results['units_file'] = os.path.basename(units_path(path))
  payload = _jsonable({'task': task, 'step': step, 'variant': variant, **results})
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=1, ensure_ascii=False)
  os.replace(tmp, path)
  directory = os.path.dirname(path)
  if markdown:
    with open(os.path.join(directory, 'results.md'), 'w') as f:
      f.write(f'# {task}, step {step}\n\n{markdown}\n\n{INTERVAL_NOTE}\n')
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(directory, asynchronous=False)
  writer.write_scalars(step, scalars(results))
  writer.flush()
  writer.close()
  return path


def find_step(workdir: str, task: str, step: int | None = None,
              variant: str = '') -> str | None:
  """The JSON path of a task's results at `step` (default: the latest evaluated), or None."""
  directory = runner.output_dir(workdir, task, variant)
  paths = sorted(glob.glob(os.path.join(directory, 'step_*.json')))
  if step is not None:
    paths = [p for p in paths if p.endswith(f'step_{step:08d}.json')]
  return paths[-1] if paths else None


def load_step(workdir: str, task: str, step: int | None = None,
              variant: str = '') -> dict[str, Any] | None:
  """A task's results at `step` (default: the latest evaluated), or None."""
  path = find_step(workdir, task, step, variant)
  if path is None:
    return None
  with open(path) as f:
    return json.load(f)


def find_variants(workdir: str, tasks: Sequence[str]) -> dict[str, list[str]]:
  """{variant: [tasks with results of it]} in a workdir ('' = the default variant,
  in eval/<task>/ itself; others in eval/<task>/<variant>/, see runner.variant_of)."""
  found: dict[str, list[str]] = {}
  for task in tasks:
    directory = runner.output_dir(workdir, task)
    if glob.glob(os.path.join(directory, 'step_*.json')):
      found.setdefault('', []).append(task)
    for path in sorted(glob.glob(os.path.join(directory, '*', 'step_*.json'))):
      variant = os.path.basename(os.path.dirname(path))
      if task not in found.setdefault(variant, []):
        found[variant].append(task)
  return found


def choose_variant(workdirs: Sequence[str], tasks: Sequence[str]) -> tuple[str, list[str]]:
  """(the variant a report shows, every variant all `workdirs` have results of).

  The one with results for the most of `tasks` (summed over the workdirs); on a tie
  the default, then the first by name. Raises ValueError when there is none.
  """
  found = [find_variants(w, tasks) for w in workdirs]
  common = set(found[0]).intersection(*found[1:]) if found else set()
  if not common:
    where = ', '.join(f'{w}: {sorted(f) or "none"}' for w, f in zip(workdirs, found))
    raise ValueError(f'no variant with {" or ".join(tasks)} results in every workdir '
                     f'(variants found: {where}); run the eval binaries first')
  ranked = sorted(common, key=lambda v: (-sum(len(f[v]) for f in found), v != '', v))
  return ranked[0], sorted(common)


def variant_note(variant: str, available: Sequence[str]) -> str:
  """The line a report starts with when it chose the variant itself."""
  others = [v or 'default' for v in available if v != variant]
  return (f'Variant shown: {variant or "default"} (results in '
          f'eval/<task>/{variant + "/" if variant else ""})'
          + (f'; also found: {", ".join(others)} (choose with --feature / --normalize)'
             if others else '') + '.')


def summary(workdir: str, task: str, steps: Sequence[int], variant: str = '') -> str:
  """What an eval binary prints at the end: the results table and the paths written."""
  directory = runner.output_dir(workdir, task, variant)
  results_md = os.path.join(directory, 'results.md')
  if not steps:
    return (f'{task}: nothing new to evaluate (done-list {os.path.join(directory, "done.json")}'
            f'; --force evaluates again); latest results: {results_md}')
  lines = []
  if os.path.isfile(results_md):
    with open(results_md) as f:
      lines.append(f.read().rstrip())
  written = []
  for step in steps:
    path = step_path(workdir, task, step, variant)
    written += [p for p in (path, units_path(path)) if os.path.isfile(p)]
  written.append(results_md)
  written += sorted(glob.glob(os.path.join(directory, '*.png')))
  lines.append(f'{task}: evaluated step{"s" * (len(steps) > 1)} '
               f'{", ".join(map(str, steps))}; wrote (and TensorBoard events in {directory}):')
  lines += [f'  {p}' for p in written]
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- tables


def _fmt(value: Any) -> str:
  return '-' if value is None or (isinstance(value, float) and math.isnan(value)) else (
      f'{value:.2f}' if isinstance(value, float) else str(value))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(_fmt(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- intervals

INTERVAL_NOTE = (f'[low, high]: {metrics_lib.CI_LEVEL:.0f}% percentile-bootstrap interval over '
                 f'the evaluation units ({metrics_lib.BOOTSTRAP_RESAMPLES} resamples of the '
                 'queries, test items or clustered items). Eval set "TOO SMALL": '
                 f'{metrics_lib.SMALL_SET_RULE}.')
PRETTY = {'m5_map@10': 'mAP@10', 'recall@10': 'Recall@10', 'accuracy': 'Acc', 'nmi': 'NMI'}


def with_ci(value: Any, interval: Sequence[Any] | None = None) -> str:
  """'61.7 [55.2, 68.0]'; the plain number where there is no interval."""
  if (value is None or interval is None or any(v is None for v in interval)
      or any(math.isnan(float(v)) for v in (value, *interval))):
    return _fmt(value)
  return f'{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]'


def metric_ci(metrics: Mapping[str, Any] | None, name: str) -> str:
  """One metric of a modality set's results, with its interval when saved."""
  metrics = metrics or {}
  return with_ci(metrics.get(name), metrics.get('ci95', {}).get(name))


def eval_set_flag(*sets: Mapping[str, Any] | None, prefixes: Sequence[str] = ()) -> str:
  """'TOO SMALL (mAP@10, ...)' when a flagged interval's half-width exceeds 5 points, 'ok'
  when the intervals are narrower, '-' without intervals (an older results file)."""
  flagged, measured = [], False
  for i, metrics in enumerate(sets):
    if not metrics or 'too_small_to_separate_5_points' not in metrics:
      continue
    measured = True
    prefix = prefixes[i] + ' ' if i < len(prefixes) and prefixes[i] else ''
    # From the intervals when saved (the current rule), else the flag as saved.
    names = (metrics_lib.too_small(metrics['ci95']) if metrics.get('ci95')
             else metrics['too_small_to_separate_5_points'])
    flagged += [prefix + PRETTY.get(name, name) for name in names]
  if flagged:
    return f'TOO SMALL ({", ".join(flagged)})'
  return 'ok' if measured else '-'


def retrieval_tables(results: Mapping[str, Any], ks: Sequence[int] = PAPER_KS) -> str:
  """M5Product mAP@K/P@K per modality set, then the standard metrics beside them."""
  sets = results['sets']
  m5 = markdown_table(
      ['Modalities'] + [f'mAP@{k}' for k in ks] + [f'P@{k}' for k in ks]
      + ['queries', 'eval set'],
      [[label] + [metric_ci(m, f'm5_map@{k}') for k in ks]
       + [metric_ci(m, f'm5_prec@{k}') for k in ks]
       + [m.get('num_queries'), eval_set_flag(m)] for label, m in sets.items()])
  standard = markdown_table(
      ['Modalities'] + [f'std mAP@{k}' for k in ks] + [f'Recall@{k}' for k in ks]
      + [f'HitRate@{k}' for k in ks],
      [[label] + [metric_ci(m, f'std_map@{k}') for k in ks]
       + [metric_ci(m, f'recall@{k}') for k in ks]
       + [metric_ci(m, f'hit_rate@{k}') for k in ks] for label, m in sets.items()])
  return (f'M5Product metric (k = min(K, #positives, #ranked)):\n\n{m5}\n\n'
          f'Standard metrics:\n\n{standard}\n')


def paper_table(classification: Mapping[str, Any] | None, retrieval: Mapping[str, Any] | None,
                ks: Sequence[int] = PAPER_KS) -> str:
  """Rows = modality sets; columns Acc, mAP@1/5/10, P@1/5/10 (the paper's layout)."""
  cls_sets = (classification or {}).get('sets', {})
  ret_sets = (retrieval or {}).get('sets', {})
  labels = list(dict.fromkeys([*cls_sets, *ret_sets]))
  rows = []
  for label in labels:
    c, r = cls_sets.get(label), ret_sets.get(label)
    rows.append([label, metric_ci(c, 'accuracy')] + [metric_ci(r, f'm5_map@{k}') for k in ks]
                + [metric_ci(r, f'm5_prec@{k}') for k in ks]
                + [eval_set_flag(c, r, prefixes=('cls', 'retrieval'))])
  return markdown_table(['Modalities', 'Acc'] + [f'mAP@{k}' for k in ks]
                        + [f'P@{k}' for k in ks] + ['eval set'], rows)


def resolve_set(sets: Sequence[str], modality_set: str) -> str | None:
  """The row label for `modality_set` ('all': the row with the most modalities), or None."""
  if modality_set in sets:
    return modality_set
  if modality_set == 'all' and sets:
    return max(sets, key=lambda label: label.count('+'))
  return None


def _pick_set(name: str, task: str, results: Mapping[str, Any] | None,
              modality_set: str | None) -> str | None:
  """The row label of a run's task results that method tables use (see method_table)."""
  sets = (results or {}).get('sets', {})
  if modality_set is None and len(sets) > 1:
    raise ValueError(f'{name}: {task} has rows {sorted(sets)}; choose one with --modality_set')
  label = resolve_set(list(sets), modality_set) if modality_set else next(iter(sets), None)
  return label if label in sets else None


METHOD_TASKS = ('classification', 'coarse_retrieval', 'clustering')


def method_table(runs: Mapping[str, str], modality_set: str | None = None,
                 variant: str = '') -> str:
  """Method comparison: Acc, mAP@1, NMI, Purity; one row per (name -> workdir).

  Each number is the `modality_set` row of its task (see resolve_set; '-' where
  that run has no such row); without `modality_set`, a task must have exactly one row.
  """
  rows = []
  for name, workdir in runs.items():
    picked = []
    for task in METHOD_TASKS:
      results = load_step(workdir, task, variant=variant)
      label = _pick_set(name, task, results, modality_set)
      picked.append(results['sets'][label] if label else None)
    cls, ret, clu = picked
    rows.append([name, metric_ci(cls, 'accuracy'), metric_ci(ret, 'm5_map@1'),
                 metric_ci(clu, 'nmi'), metric_ci(clu, 'purity'),
                 eval_set_flag(cls, ret, clu, prefixes=('cls', 'coarse', 'clustering'))])
  return markdown_table(['Method', 'Acc', 'mAP@1', 'NMI', 'Purity', 'eval set'], rows)


# The per-unit values (step_<N>.npz) a metric is the mean of; clustering metrics
# are recomputed from 'label' and 'cluster' instead.
UNIT_VALUES = {'accuracy': 'correct'}
PAIRED_COLUMNS = (('Acc', 'classification', 'accuracy'), ('mAP@1', 'coarse_retrieval', 'm5_map@1'),
                  ('mAP@10', 'coarse_retrieval', 'm5_map@10'), ('NMI', 'clustering', 'nmi'),
                  ('Purity', 'clustering', 'purity'))


def compare_units(task: str, metric: str, a: Sequence[Mapping[str, np.ndarray]],
                  b: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Any]:
  """Run a minus run b on one metric, paired (metrics.paired_comparison or its
  clustering form): one units dict ({name: per-unit array} of a modality set) per
  seed for each, seeds pooled. Raises ValueError when they scored other units."""
  everything = [*a, *b]
  for units in everything[1:]:
    if not np.array_equal(units['unit'], everything[0]['unit']):
      raise ValueError(f'{task}: the runs were not scored on the same items')
  if task == 'clustering':
    return metrics_lib.paired_clustering_comparison(
        everything[0]['label'], [u['cluster'] for u in a], [u['cluster'] for u in b],
        metric=metric)
  name = UNIT_VALUES.get(metric, metric)
  return metrics_lib.paired_comparison(np.stack([u[name] for u in a]),
                                       np.stack([u[name] for u in b]))


def paired_table(runs: Mapping[str, str], modality_set: str | None = None,
                 variant: str = '') -> str:
  """Every run after the first against the first, on the same eval units: the
  difference [paired 95% interval] and win / tie / loss per metric ('-' where a
  run has no per-unit values, e.g. results written before they were saved)."""
  names = list(runs)
  units = {}
  for name in names:
    for task in METHOD_TASKS:
      path = find_step(runs[name], task, variant=variant)
      results = None
      if path:
        with open(path) as f:
          results = json.load(f)
      label = _pick_set(name, task, results, modality_set)
      units[name, task] = load_units(path).get(label) if label else None
  rows = []
  for name in names[1:]:
    row = [f'{name} - {names[0]}']
    for _, task, metric in PAIRED_COLUMNS:
      a, b = units[name, task], units[names[0], task]
      if a is None or b is None:
        row.append('-')
        continue
      result = compare_units(task, metric, [a], [b])
      low, high = result['difference_ci95']
      row.append(f'{result["difference"]:+.1f} [{low:+.1f}, {high:+.1f}] {result["verdict"]}')
    rows.append(row)
  return markdown_table(['Paired difference'] + [c for c, _, _ in PAIRED_COLUMNS], rows)


# ----------------------------------------------------------------------------- plots


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_precision_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str,
                          title: str = '') -> str:
  """P@K (M5Product) against K, one line per modality set; the legend beside the
  axes, where it cannot cover a curve."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4))
  for label, curve in curves.items():
    ax.plot(curve['k'], curve['m5_prec'], label=label)
  ax.set_xscale('log')
  ax.set_xlabel('K (ranked items, log scale)')
  ax.set_ylabel('P@K (%)')
  ax.set_title(title or 'precision at K')
  ax.grid(alpha=0.3)
  ax.legend(title='modalities', fontsize=8, loc='upper left', bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0)
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path


# Categories the projection plot colours one by one (tab20 has 20 colours; the
# rest, the least frequent, share one grey).
PROJECTION_COLOURED = 19


def plot_projection(features: np.ndarray, labels: np.ndarray, path: str, *, method: str = 'pca',
                    max_points: int = 5000, seed: int = 0, title: str = '') -> str | None:
  """A 2-D projection (PCA or t-SNE) of `features`, coloured by category.

  Labels are ids (12-digit or hashed, not small indices): the most frequent
  PROJECTION_COLOURED categories get a colour and a legend entry each, the rest one
  grey 'other' entry. PCA axes say how much variance each component explains.
  Returns None (and draws nothing) with fewer than 3 labelled points.
  """
  from sklearn import decomposition, manifold  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  keep = np.flatnonzero(labels >= 0)
  if len(keep) < 3:
    logging.warning('projection plot skipped: %d labelled points', len(keep))
    return None
  if len(keep) > max_points:
    keep = np.sort(rng.choice(keep, max_points, replace=False))
  x, y = np.asarray(features[keep], np.float32), np.asarray(labels[keep], np.int64)
  if method == 'tsne':
    xy = manifold.TSNE(2, random_state=seed, init='pca',
                       perplexity=min(30.0, max(2.0, len(x) / 4))).fit_transform(x)
    axis_names = ('t-SNE 1', 't-SNE 2')
  else:
    pca = decomposition.PCA(2, random_state=seed).fit(x)
    xy = pca.transform(x)
    axis_names = tuple(f'PC {i + 1} ({100 * r:.0f}% of variance)'
                       for i, r in enumerate(pca.explained_variance_ratio_))
  categories, counts = np.unique(y, return_counts=True)
  by_frequency = categories[np.lexsort((categories, -counts))]
  coloured = by_frequency[:PROJECTION_COLOURED]
  others = by_frequency[PROJECTION_COLOURED:]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  if len(others):
    rows = np.isin(y, others)
    ax.scatter(xy[rows, 0], xy[rows, 1], s=5, alpha=0.5, color='lightgray',
               label=f'{len(others)} other categories ({int(rows.sum())})')
  palette = plt.get_cmap('tab20')
  for i, category in enumerate(coloured):
    rows = y == category
    ax.scatter(xy[rows, 0], xy[rows, 1], s=6, alpha=0.8, color=palette(i % 20),
               label=f'{category} ({int(rows.sum())})')
  ax.set_xlabel(axis_names[0])
  ax.set_ylabel(axis_names[1])
  ax.set_title(title or f'{method.upper()} of the embeddings, coloured by category')
  ax.grid(alpha=0.3)
  handles, names = ax.get_legend_handles_labels()
  if len(others):  # drawn first (underneath), listed last
    handles, names = handles[1:] + handles[:1], names[1:] + names[:1]
  ax.legend(handles, names, title='category (items)', fontsize=7, title_fontsize=8,
            markerscale=2, loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path


def plot_long_tail(per_class: Mapping[int, float], class_counts: Mapping[int, int], path: str,
                   title: str = '') -> str:
  """Per-class accuracy with classes sorted by training frequency (head left, tail right)."""
  classes = sorted(per_class, key=lambda c: (-class_counts.get(c, 0), c))
  plt = _pyplot()
  fig, ax1 = plt.subplots(figsize=(7, 4))
  positions = np.arange(len(classes))
  ax1.bar(positions, [class_counts.get(c, 0) for c in classes], color='lightgray',
          label='training examples')
  if any(class_counts.get(c, 0) > 0 for c in classes):
    ax1.set_yscale('log')
  ax1.set_xlabel('classes, by training frequency')
  ax1.set_ylabel('training examples')
  ax2 = ax1.twinx()
  ax2.plot(positions, [per_class[c] for c in classes], 'o-', ms=3, color='tab:blue',
           label='accuracy')
  ax2.set_ylabel('accuracy (%)')
  ax2.set_ylim(-3, 103)  # markers at 0 and 100 stay whole
  handles = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
  ax1.legend(handles, [h.get_label() for h in handles], fontsize=8, loc='upper left',
             bbox_to_anchor=(1.12, 1.0), borderaxespad=0.0)
  ax1.set_title(title or 'per-class accuracy along the long tail')
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str]) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='m5_jax.evaluate.report', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', help='one run: the modality-set table')
  parser.add_argument('--step', type=int, default=None)
  parser.add_argument('--compare', help='name=WORKDIR,name=WORKDIR,...: the method table')
  parser.add_argument('--modality_set', default=None,
                      help="row used by --compare, e.g. I+T ('all': the most modalities)")
  parser.add_argument('--feature', default=None,
                      help="the eval binaries' --feature (default: the variant found, see below)")
  parser.add_argument('--normalize', default=None,
                      help="the eval binaries' --normalize (default: the variant found)")
  parser.add_argument('--out', default=None, help='Markdown file to write (default: print)')
  args = parser.parse_args(argv)
  runs = dict(item.split('=', 1) for item in args.compare.split(',')) if args.compare else {}
  parts = []
  if args.feature is None and args.normalize is None:
    # No variant asked for: the one the eval binaries wrote (the demo's is
    # feature=encoder_pooled), said in the output's first line.
    workdirs = ([args.workdir] if args.workdir else []) + list(runs.values())
    tasks = METHOD_TASKS if runs else ('classification', 'coarse_retrieval')
    if not workdirs:
      parser.error('give --workdir and/or --compare')
    try:
      variant, available = choose_variant(workdirs, tasks)
    except ValueError as e:
      parser.error(str(e))
    parts.append(variant_note(variant, available))
  else:
    defaults = runner.Options()
    variant = runner.variant_of(runner.Options(feature=args.feature or defaults.feature,
                                               normalize=args.normalize or defaults.normalize))
  if args.workdir:
    cls = load_step(args.workdir, 'classification', args.step, variant)
    ret = load_step(args.workdir, 'coarse_retrieval', args.step, variant)
    if cls is None and ret is None:
      found = sorted(find_variants(args.workdir, ('classification', 'coarse_retrieval')))
      parser.error('no classification or coarse_retrieval results in '
                   f'{runner.output_dir(args.workdir, "<task>", variant)}'
                   + (f' at step {args.step}' if args.step is not None else '')
                   + f'; variants found: {", ".join(v or "default" for v in found) or "none"}')
    parts.append(paper_table(cls, ret))
  if runs:
    try:
      parts.append(method_table(runs, args.modality_set, variant))
      if len(runs) > 1:
        parts.append(f'Paired against {next(iter(runs))} (the same eval items resampled for '
                     'both; win / loss: the interval is above / below 0, else tie):\n\n'
                     + paired_table(runs, args.modality_set, variant))
    except ValueError as e:
      parser.error(str(e))
  if not parts:
    parser.error('give --workdir and/or --compare')
  text = '\n\n'.join([*parts, INTERVAL_NOTE]) + '\n'
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  else:
    sys.stdout.write(text)


if __name__ == '__main__':
  main(sys.argv[1:])
