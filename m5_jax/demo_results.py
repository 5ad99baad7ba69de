"""The demo's results: pretrained vs random weights, per seed and pooled, in Markdown.

Reads what the eval binaries wrote (m5_jax/evaluate/results_io.py) and the train
binary's metrics.jsonl; m5_jax/demo.py writes the outcome to WORKDIR/results.md.
"""
from __future__ import annotations

import json
import os
import sys

TASKS = ('coarse_retrieval', 'fine_retrieval', 'classification', 'clustering')
# (label, task, metric) rows of the side-by-side comparison; COUNTS names the
# metric that says how many items a task's number averages over (mini is small).
HEADLINE = (
    ('coarse retrieval mAP@10', 'coarse_retrieval', 'm5_map@10'),
    ('coarse retrieval P@10', 'coarse_retrieval', 'm5_prec@10'),
    ('fine retrieval mAP@10', 'fine_retrieval', 'm5_map@10'),
    ('fine retrieval Recall@10', 'fine_retrieval', 'recall@10'),
    ('linear-probe accuracy %', 'classification', 'accuracy'),
    ('clustering NMI', 'clustering', 'nmi'),
)
COUNTS = {'coarse_retrieval': 'num_queries', 'fine_retrieval': 'num_queries',
          'classification': 'num_examples', 'clustering': 'num_examples'}


# ----------------------------------------------------------------------------- results


def latest_results(workdir: str, task: str, feature: str) -> dict:
  """The task's results of the latest step evaluated with `feature`, with 'units': the
  per-unit values saved beside them ({set: {name: array}}; {} for an older results file)."""
  from m5_jax.evaluate import results_io, runner  # pylint: disable=g-import-not-at-top
  variant = runner.variant_of(runner.Options(feature=feature))
  path = results_io.find_step(workdir, task, variant=variant)
  if path is None:
    sys.exit(f'[demo] no results in {runner.output_dir(workdir, task, variant)}')
  with open(path) as f:
    return {**json.load(f), 'units': results_io.load_units(path)}


def eval_headline(workdir: str, task: str, feature: str, modality_set: str) -> str:
  """An eval stage's result line: its HEADLINE metric on `modality_set` and how many items
  it averages over (the intervals are in the final table), and the folder it wrote."""
  from m5_jax.evaluate import results_io, runner  # pylint: disable=g-import-not-at-top
  variant = runner.variant_of(runner.Options(feature=feature))
  path = results_io.find_step(workdir, task, variant=variant)
  if path is None:
    return f'no results in {runner.output_dir(workdir, task, variant)}'
  with open(path) as f:
    results = json.load(f)
  label = resolve_set(results, modality_set)
  name, metric = next((name, metric) for name, t, metric in HEADLINE if t == task)
  values = results['sets'][label]
  count = values.get(COUNTS[task])  # num_queries / num_examples
  counted = f' ({count} {COUNTS[task].partition("_")[2]})' if count is not None else ''
  return (f'step {results["step"]}: {name} {values[metric]:.1f} on {label}{counted} -> '
          f'{os.path.dirname(path)}')


def training_losses(workdir: str) -> dict:
  """{term: (first logged value, last logged value)} from the run's metrics.jsonl;
  the contrastive terms are averaged over modality pairs."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f if line.strip()]

  def terms(row):
    out = {k[len('loss/'):]: v for k, v in row.items() if k.startswith('loss/masked_')}
    pairs = [v for k, v in row.items() if k.startswith('loss/contrastive_')]
    if pairs:
      out['contrastive (pair mean)'] = sum(pairs) / len(pairs)
    return {'total': row['loss'], **out}

  first, last = terms(logged[0]), terms(logged[-1])
  return {k: (first[k], last.get(k)) for k in first}


def resolve_set(results: dict, modality_set: str) -> str:
  """The row label for `modality_set` ('all' = the set with the most modalities)."""
  from m5_jax.evaluate import report  # pylint: disable=g-import-not-at-top
  label = report.resolve_set(list(results.get('sets', {})), modality_set)
  if label is None:
    raise KeyError(f'modality set {modality_set!r} not among {list(results.get("sets", {}))}')
  return label


def comparison_rows(runs: dict, modality_set: str) -> list[dict]:
  """Pretrained vs random weights per HEADLINE metric: each seed's paired comparison,
  then the seeds pooled (each unit's values averaged over the seeds).

  runs: {seed: {'pretrained' | 'random_weights': {task: results with 'units'}}}.
  Returns one dict per (metric, seed | 'pooled'): label, seed, pretrained / random
  weights / difference with their 95% intervals, verdict, items; the pooled row also
  'every_seed_wins', the condition for claiming pretraining beats random weights.
  A metric whose per-unit values are missing gets None numbers and verdict 'n/a'.
  """
  from m5_jax.evaluate import metrics, report  # pylint: disable=g-import-not-at-top
  rows = []
  for label, task, metric in HEADLINE:
    units = {}
    for by_run in runs.values():
      for run_name in ('pretrained', 'random_weights'):
        results = by_run[run_name][task]
        units.setdefault(run_name, []).append(
            results.get('units', {}).get(resolve_set(results, modality_set)))
    per_seed = list(runs)
    if any(u is None for us in units.values() for u in us):
      rows += [{'label': label, 'seed': seed, 'pretrained': None, 'verdict': 'n/a'}
               for seed in [*per_seed, 'pooled']]
      continue
    verdicts = []
    for i, seed in enumerate([*per_seed, 'pooled']):
      chosen = slice(i, i + 1) if seed != 'pooled' else slice(None)
      result = report.compare_units(task, metric, units['pretrained'][chosen],
                                    units['random_weights'][chosen])
      too_small = bool(metrics.too_small({'a': result['a_ci95'], 'b': result['b_ci95']},
                                         ('a', 'b')))
      row = {'label': label, 'seed': seed, 'pretrained': result['a'],
             'pretrained_ci95': result['a_ci95'], 'random_weights': result['b'],
             'random_weights_ci95': result['b_ci95'], 'difference': result['difference'],
             'difference_ci95': result['difference_ci95'], 'verdict': result['verdict'],
             'items': result['units'], 'too_small_to_separate_5_points': too_small}
      if seed == 'pooled':
        row['seed_verdicts'] = verdicts
        row['every_seed_wins'] = all(v == 'win' for v in verdicts)
      else:
        verdicts.append(result['verdict'])
      rows.append(row)
  return rows


def _ci(value, interval, signed: bool = False) -> str:
  if value is None:
    return 'n/a'
  number = f'{value:+.1f}' if signed else f'{value:.1f}'
  return f'{number} [{interval[0]:.1f}, {interval[1]:.1f}]'


def comparison_markdown(rows: list[dict], modality_set: str) -> str:
  """The side-by-side table: per metric, each seed and the seeds pooled."""
  lines = [f'| {modality_set} | seed | pretrained [95% CI] | random weights [95% CI] | '
           'difference [paired 95% CI] | verdict | items |', '|---|---|---:|---:|---:|---|---:|']
  previous = None
  for row in rows:
    verdict = row['verdict']
    if row['seed'] == 'pooled' and row.get('seed_verdicts'):
      verdict += (' (every seed wins)' if row['every_seed_wins']
                  else f' (seeds: {", ".join(row["seed_verdicts"])})')
    items = '' if row['pretrained'] is None else str(row['items'])
    if row.get('too_small_to_separate_5_points'):
      items += ' TOO SMALL'
    lines.append(f'| {row["label"] if row["label"] != previous else ""} | {row["seed"]} | '
                 f'{_ci(row["pretrained"], row.get("pretrained_ci95"))} | '
                 f'{_ci(row.get("random_weights"), row.get("random_weights_ci95"))} | '
                 f'{_ci(row.get("difference"), row.get("difference_ci95"), signed=True)} | '
                 f'{verdict} | {items} |')
    previous = row['label']
  return '\n'.join(lines)


def headline(rows: list[dict]) -> str:
  """The plain-words claim: where pretraining beat random weights on every seed, by how
  much (pooled), and where it did not."""
  pooled = [r for r in rows if r['seed'] == 'pooled' and r['pretrained'] is not None]

  def gain(r):
    low, high = r['difference_ci95']
    return f'{r["label"]} {r["difference"]:+.1f} points [{low:+.1f}, {high:+.1f}]'
  wins = [r for r in pooled if r['every_seed_wins']]
  others = [r for r in pooled if not r['every_seed_wins']]
  seeds = len(pooled[0]['seed_verdicts']) if pooled else 0
  if not pooled:
    return 'No comparison: the per-item values are missing.'
  in_seeds = 'in the one seed' if seeds == 1 else f'in every one of the {seeds} seeds'
  parts = [f'Pretraining beat random weights {in_seeds} on: '
           + '; '.join(gain(r) for r in wins) + ' (pooled difference, paired 95% CI).'
           if wins else f'Pretraining beat random weights on no task {in_seeds}.']
  if others:
    parts.append('Not shown (some seed tied or lost): ' + '; '.join(
        f'{gain(r)}, seeds {"/".join(r["seed_verdicts"])}' for r in others) + '.')
  small = sorted({r['label'] for r in rows if r.get('too_small_to_separate_5_points')})
  if small:
    parts.append('TOO SMALL to separate 5 points (an interval reaching more than 5 points '
                 'either side): ' + ', '.join(small) + '.')
  return ' '.join(parts)


def timings_markdown(timings: dict) -> str:
  lines = ['| stage | wall s | CPU s |', '|---|---:|---:|']
  for name, t in timings.items():
    note = ' (earlier run)' if t.get('skipped') else ''
    lines.append(f'| {name}{note} | {t["wall_s"]:.0f} | {t["cpu_s"]:.0f} |')
  total_wall = sum(t['wall_s'] for t in timings.values())
  total_cpu = sum(t['cpu_s'] for t in timings.values())
  lines.append(f'| total | {total_wall:.0f} | {total_cpu:.0f} |')
  return '\n'.join(lines)
