"""The matrix's tables in the paper's layout, the noise level, and the findings check.

Input: {cell name: cell result} where a cell result (written by
m5_jax.benchmark_matrix.collect_cell) is

  {'cell': name, 'method', 'letters', 'seed', 'label': 'T+I', 'tables': [...],
   'pretrained' | 'finetuned' | 'random_init': {task: {set label: metrics}}, ...}

with the eval binaries' metrics (in %): classification 'accuracy', coarse_retrieval
'm5_map@K' / 'm5_prec@K' (the M5Product metric), clustering 'nmi' / 'purity', and
their 95% intervals ('ci95'), which the tables print beside the numbers.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

from m5_jax.evaluate import tables as eval_tables

KS = (1, 5, 10)
# (column name, task, metric)
SET_COLUMNS = (('Acc', 'classification', 'accuracy'),
               *((f'mAP@{k}', 'coarse_retrieval', f'm5_map@{k}') for k in KS),
               *((f'P@{k}', 'coarse_retrieval', f'm5_prec@{k}') for k in KS))
METHOD_COLUMNS = (('mAP@1', 'coarse_retrieval', 'm5_map@1'), ('Acc', 'classification', 'accuracy'),
                  ('NMI', 'clustering', 'nmi'), ('Purity', 'clustering', 'purity'))
# The metrics the findings are judged on.
HEADLINE = (('mAP@10', 'coarse_retrieval', 'm5_map@10'), ('Acc', 'classification', 'accuracy'))
METHOD_NAMES = {'image_only': 'Image only', 'text_only': 'Text only (BERT)', 'clip': 'CLIP',
                'single_stream': 'Single stream (VisualBERT/UNITER/VL-BERT)',
                'dual_stream': 'Dual stream (ViLBERT/LXMERT)', 'capture': 'CAPTURE',
                'm5_mmt': 'M5-MMT', 'scale': 'SCALE'}
WEIGHTS = ('pretrained', 'finetuned')
WEIGHT_NAMES = {'pretrained': 'pretrain features', 'finetuned': 'fine-tuned',
                'random_init': 'random weights'}


def metric(result: Mapping[str, Any] | None, weights: str, task: str, name: str,
           set_label: str | None = None) -> float | None:
  """One number of a cell (None when that run or metric does not exist)."""
  if not result:
    return None
  sets = result.get(weights, {}).get(task, {})
  values = sets.get(set_label or result['label'])
  if values is None:
    return None
  value = values.get(name)
  return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def metric_text(result: Mapping[str, Any] | None, weights: str, task: str, name: str,
                set_label: str | None = None) -> str:
  """One number of a cell as a table shows it: with its 95% interval when the eval
  binary saved one ('61.7 [55.2, 68.0]'), '-' when it does not exist."""
  values = ((result or {}).get(weights, {}).get(task, {})
            .get(set_label or (result or {}).get('label')))
  return eval_tables.metric_ci(values, name) if values else '-'


def _cells_in(results: Mapping[str, Mapping], table: str) -> list[Mapping]:
  return [r for r in results.values() if table in r.get('tables', ()) and not r.get('seed')]


def _per_weights_table(first_header: str, cells, first_cell, columns) -> str:
  """One row per cell: `first_cell(cell)`, then `columns` for each of WEIGHTS."""
  rows = [[first_cell(r)] + [metric_text(r, weights, task, name)
                             for weights in WEIGHTS for _, task, name in columns]
          for r in cells]
  header = [first_header] + [f'{c} ({"FT" if w == "finetuned" else "PT"})'
                             for w in WEIGHTS for c, _, _ in columns]
  return eval_tables.markdown_table(header, rows)


def set_table(results: Mapping[str, Mapping], table: str) -> str:
  """Rows = modality sets; per weights: Acc, mAP@1/5/10, P@1/5/10."""
  return _per_weights_table('Modalities', _cells_in(results, table), lambda r: r['label'],
                            SET_COLUMNS)


def method_table(results: Mapping[str, Mapping]) -> str:
  """Rows = methods (Table 3); per weights: mAP@1, Acc, NMI, Purity."""
  return _per_weights_table(
      'Method', _cells_in(results, 'methods'),
      lambda r: f'{METHOD_NAMES.get(r["method"], r["method"])} ({r["label"]})', METHOD_COLUMNS)


def per_modality_table(result: Mapping[str, Any]) -> str:
  """One model's features scored per modality subset (pretrained weights)."""
  labels = list(result.get('pretrained', {}).get('coarse_retrieval', {}))
  rows = [[label] + [metric_text(result, 'pretrained', task, name, label)
                     for _, task, name in SET_COLUMNS] for label in labels]
  return eval_tables.markdown_table(['Subset'] + [c for c, _, _ in SET_COLUMNS], rows)


def weights_table(result: Mapping[str, Any]) -> str:
  """Random weights vs pretrained vs fine-tuned for one cell."""
  rows = [[WEIGHT_NAMES[w]] + [metric_text(result, w, task, name)
                               for _, task, name in METHOD_COLUMNS]
          for w in ('random_init', 'pretrained', 'finetuned') if result.get(w)]
  return eval_tables.markdown_table(['Weights'] + [c for c, _, _ in METHOD_COLUMNS], rows)


# ----------------------------------------------------------------------------- noise


def seed_groups(results: Mapping[str, Mapping]) -> dict[str, list[Mapping]]:
  """{base cell name: [its results over seeds]} for cells run with more than one seed."""
  groups: dict[str, list[Mapping]] = {}
  for r in results.values():
    groups.setdefault(f'{r["method"]}-{r["letters"]}', []).append(r)
  return {k: sorted(v, key=lambda r: r['seed']) for k, v in groups.items() if len(v) > 1}


def noise_levels(results: Mapping[str, Mapping]) -> dict[tuple[str, str], float]:
  """{(weights, column): std over seeds}, pooled over the seed groups (root mean variance)."""
  variances: dict[tuple[str, str], list[float]] = {}
  for runs in seed_groups(results).values():
    for weights in WEIGHTS:
      for column, task, name in HEADLINE:
        values = [metric(r, weights, task, name) for r in runs]
        values = [v for v in values if v is not None]
        if len(values) > 1:
          variances.setdefault((weights, column), []).append(statistics.variance(values))
  return {k: math.sqrt(sum(v) / len(v)) for k, v in variances.items()}


def noise_table(results: Mapping[str, Mapping]) -> str:
  rows = []
  for base, runs in seed_groups(results).items():
    for weights in WEIGHTS:
      for column, task, name in HEADLINE:
        values = [metric(r, weights, task, name) for r in runs]
        known = [v for v in values if v is not None]
        std = statistics.stdev(known) if len(known) > 1 else None
        rows.append([base, WEIGHT_NAMES[weights], column,
                     ', '.join(eval_tables.fmt(v) for v in values), std])
  return eval_tables.markdown_table(['Cell', 'Weights', 'Metric', 'per seed', 'std'], rows)


def sampling_error(result: Mapping[str, Any]) -> str:
  """Binomial standard error of the accuracy: how far a number moves with the eval items."""
  acc = metric(result, 'pretrained', 'classification', 'accuracy')
  n = (result.get('pretrained', {}).get('classification', {}).get(result['label'], {})
       .get('num_examples'))
  queries = (result.get('pretrained', {}).get('coarse_retrieval', {}).get(result['label'], {})
             .get('num_queries'))
  if acc is None or not n:
    return 'n/a'
  se = math.sqrt(acc * (100 - acc) / n)
  return (f'accuracy {acc:.1f}% over {n} cls_test items: binomial standard error '
          f'{se:.1f} points; coarse retrieval averages over {queries} queries')


# ----------------------------------------------------------------------------- findings


def sign_test_p(margins: Sequence[float]) -> float:
  """One-sided sign test: P(at least this many positive margins | each sign a coin flip)."""
  n, positive = len(margins), sum(m > 0 for m in margins)
  return sum(math.comb(n, k) for k in range(positive, n + 1)) / 2 ** n


def _verdict(margins: Sequence[float], noise: float | None) -> str:
  """'holds' when every margin is above the noise, 'fails' when one is below -noise
  (noise None: unknown, judged against 0 and said so). Between the two, several
  independent margins (separate cells) can still agree in sign beyond chance: then
  'holds in sign' with the sign test's p (< 0.05), else 'within noise'."""
  if not margins:
    return 'n/a (cells not run)'
  band = noise or 0.0
  unknown = '' if noise is not None else ' (noise unknown: no seed runs)'
  if all(m > band for m in margins):
    return 'holds' + unknown
  if any(m < -band for m in margins):
    return 'fails' + unknown
  p = sign_test_p(margins)
  if len(margins) > 1 and p < 0.05:
    positive = sum(m > 0 for m in margins)
    return (f'holds in sign ({positive}/{len(margins)} positive, sign test p={p:.2g}); '
            'some margins within noise')
  return 'within noise'


def findings(results: Mapping[str, Mapping]) -> list[dict[str, Any]]:
  """The paper's four claims, checked per headline metric on pretrained and fine-tuned
  weights: each a dict(claim, weights, metric, evidence, verdict, noise)."""
  noise = noise_levels(results)
  sequence = _cells_in(results, 'sequence')
  methods = {r['method']: r for r in _cells_in(results, 'methods')}
  per_modality = [r for r in results.values() if len(r.get('pretrained', {})
                                                    .get('coarse_retrieval', {})) > 1]
  out = []
  for weights in WEIGHTS:
    for column, task, name in HEADLINE:
      band = noise.get((weights, column))

      def add(claim, margins, evidence):
        out.append(dict(claim=claim, weights=WEIGHT_NAMES[weights], metric=column,
                        evidence=evidence, verdict=_verdict(margins, band), noise=band))

      values = [(r['label'], metric(r, weights, task, name)) for r in sequence]
      values = [(label, v) for label, v in values if v is not None]
      steps = [(a[0], b[0], b[1] - a[1]) for a, b in zip(values, values[1:])]
      add('each added modality helps', [d for _, _, d in steps],
          '; '.join(f'{a}->{b} {d:+.1f}' for a, b, d in steps))

      if weights == 'pretrained':
        for r in per_modality:
          singles = {label: metric(r, weights, task, name, label)
                     for label in r['pretrained'][task] if '+' not in label}
          singles = {k: v for k, v in singles.items() if v is not None}
          if 'T' in singles and len(singles) > 1:
            best_other = max((k for k in singles if k != 'T'), key=singles.get)
            add(f'text dominates ({r["cell"]} features per modality)',
                [singles['T'] - singles[best_other]],
                ', '.join(f'{k} {v:.1f}' for k, v in singles.items()))
      else:
        margins, parts = [], []
        for r in [*sequence, *_cells_in(results, 'combinations')]:
          pt, ft = metric(r, 'pretrained', task, name), metric(r, 'finetuned', task, name)
          if pt is not None and ft is not None and r['label'] not in [p[0] for p in parts]:
            margins.append(ft - pt)
            parts.append((r['label'], ft - pt))
        out.append(dict(claim='fine-tuning lifts the numbers (FT - PT per modality set)',
                        weights='fine-tuned vs pretrain features', metric=column,
                        evidence=', '.join(f'{k} {d:+.1f}' for k, d in parts),
                        verdict=_verdict(margins, noise.get(('pretrained', column))),
                        noise=noise.get(('pretrained', column))))

      baselines = {m: metric(r, weights, task, name) for m, r in methods.items()
                   if m not in ('m5_mmt', 'scale')}
      baselines = {m: v for m, v in baselines.items() if v is not None}
      for ours in ('m5_mmt', 'scale'):
        v = metric(methods.get(ours), weights, task, name)
        if v is not None and baselines:
          best = max(baselines, key=baselines.get)
          add(f'{METHOD_NAMES[ours]} beats the image+text baselines', [v - baselines[best]],
              f'{METHOD_NAMES[ours]} {v:.1f} vs best baseline {METHOD_NAMES[best]} '
              f'{baselines[best]:.1f}')
  return out


def findings_table(rows: Sequence[Mapping[str, Any]]) -> str:
  return eval_tables.markdown_table(
      ['Claim', 'Weights', 'Metric', 'Evidence', 'Noise (std)', 'On mini'],
      [[r['claim'], r['weights'], r['metric'], r['evidence'], r['noise'], r['verdict']]
       for r in rows])


def cost_table(results: Mapping[str, Mapping], data_timings: Mapping[str, Mapping] | None = None
               ) -> str:
  """Wall and CPU seconds per cell (its stages' sum; stages done in an earlier run count
  with their original timings) and the total: what the matrix costs."""
  rows, total_wall, total_cpu = [], 0.0, 0.0
  for name, timings in [*(('data: ' + k, {k: v}) for k, v in (data_timings or {}).items()),
                        *((r['cell'], r.get('timings', {})) for r in results.values())]:
    wall = sum(t.get('wall_s', 0.0) for t in timings.values())
    cpu = sum(t.get('cpu_s', 0.0) for t in timings.values())
    total_wall, total_cpu = total_wall + wall, total_cpu + cpu
    rows.append([name, len(timings), round(wall), round(cpu)])
  rows.append(['total', '', round(total_wall), round(total_cpu)])
  return eval_tables.markdown_table(['Cell', 'stages', 'wall s', 'CPU s'], rows)


def render(results: Mapping[str, Mapping], header: str = '',
           data_timings: Mapping[str, Mapping] | None = None) -> str:
  """The whole Markdown report."""
  parts = [header] if header else []
  parts += ['## Table 1: modalities added in sequence (M5-MMT)\n\n'
            'PT = pretrain features (linear probe / frozen features), FT = fine-tuned '
            '(classification fine-tuning; its backbone gives the retrieval numbers). '
            'Coarse-grained retrieval, M5Product metric, %. ' + eval_tables.INTERVAL_NOTE + '\n\n'
            + set_table(results, 'sequence'),
            '## Table 2: modality combinations (M5-MMT)\n\n' + set_table(results, 'combinations'),
            '## Table 3: methods on image+text\n\n' + method_table(results)]
  for r in results.values():
    if len(r.get('pretrained', {}).get('coarse_retrieval', {})) > 1:
      parts.append(f'## Per-modality features of {r["cell"]} (pretrained)\n\n'
                   + per_modality_table(r))
    if r.get('random_init'):
      parts.append(f'## Random weights vs pretrained vs fine-tuned: {r["cell"]}\n\n'
                   + weights_table(r))
  noise = noise_table(results)
  sampled = [sampling_error(r) for r in _cells_in(results, 'methods')[:1]]
  parts.append('## Noise\n\nSame cell, other seeds (model init, masking, data order):\n\n'
               + noise + ('\n\nSampling: ' + sampled[0] if sampled else ''))
  parts.append("## The paper's findings on mini\n\n'holds' = every margin above the seed "
               "noise, 'fails' = a margin below minus the noise, else 'within noise'.\n\n"
               + findings_table(findings(results)))
  parts.append('## Cost\n\nSum over each cell\'s subprocesses (CPU s = user + sys of the '
               'process tree; wall s overlap when cells run in parallel):\n\n'
               + cost_table(results, data_timings))
  return '\n\n'.join(parts) + '\n'
