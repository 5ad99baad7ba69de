"""Evaluation results on disk: step_<N>.json, step_<N>.npz, results.md, TensorBoard.

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
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from m5_jax.evaluate import runner
from m5_jax.evaluate.tables import INTERVAL_NOTE


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
