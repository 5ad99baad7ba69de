r"""The benchmark matrix: methods x modality sets on M5Product-mini, in the paper's tables.

    python -m m5_jax.benchmark_matrix --config configs/matrix.py[:size=smoke] --workdir DIR \
        [--parallel N] [--only CELL,CELL] [--dry_run | --tables_only] [--config.x=y ...]

1. Data, once for every cell (m5_jax.demo's stages): make_mini -> tfds build of
   one form (config.data.form) -> tokenizer, under DIR/data.
2. Cells (m5_jax/matrix/cells.py): each pretrains one method on one modality set,
   is scored by the eval binaries, fine-tuned for classification and scored again.
   Every stage is the README's command as a subprocess, with a done-marker under
   DIR/cells/<cell>/.done; a finished cell's numbers are DIR/cells/<cell>/result.json.
   A re-run skips finished cells and stages (resumable); a failed cell is reported
   and the others go on. A cell is locked while it runs (DIR/cells/<cell>/.lock),
   so several matrix processes may share a workdir with different --only lists.
3. Tables (m5_jax/matrix/tables.py): DIR/matrix.md (Table 1 modalities in
   sequence, Table 2 combinations, Table 3 methods, noise, the paper's findings
   checked) and DIR/matrix.json (every cell's numbers and stage timings), from
   every finished cell; --tables_only writes them without running anything (e.g.
   while, or after stopping, a long run).

--parallel N runs N cells at once, each subprocess pinned to one thread
(XLA's and TensorFlow's pools) so N cells share N cores without oversubscription;
with N=1 each subprocess uses every core.

`python -m m5_jax.benchmark_matrix export_backbone --finetune FT --pretrained PT
--workdir OUT` writes the fine-tuned backbone of FT as a pretraining-style workdir
(PT's config, params = FT's params['backbone']) for the frozen-feature binaries.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import threading
import time

from m5_jax import config_lib
from m5_jax import demo_results
from m5_jax import stage_runner
from m5_jax.matrix import cells as cells_lib
from m5_jax.matrix import tables

RESULT = 'result.json'
RUNS = ('pretrained', 'finetuned', 'random_init')
_print_lock = threading.Lock()


def log(message: str) -> None:
  with _print_lock:
    print(f'[matrix] {message}', flush=True)


def subprocess_env(work: str, parallel: int) -> dict[str, str]:
  """Shared JAX compile cache; one compute thread per subprocess when cells run side by side."""
  env = {'JAX_COMPILATION_CACHE_DIR': os.path.join(work, 'jax_cache'),
         'TF_CPP_MIN_LOG_LEVEL': os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2')}
  if parallel > 1:
    env.update({'XLA_FLAGS': (os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen='
                              'false intra_op_parallelism_threads=1').strip(),
                'TF_NUM_INTRAOP_THREADS': '1', 'TF_NUM_INTEROP_THREADS': '1',
                'OMP_NUM_THREADS': '1'})
  return env


def num_classes(paths: cells_lib.Paths) -> int:
  with open(os.path.join(paths.release, 'mini_manifest.json'), encoding='utf-8') as f:
    return len(json.load(f)['label_names'])


# ----------------------------------------------------------------------------- one stage


def run_stage(name: str, cmd: list[str], directory: str, timings: dict, env: dict) -> None:
  """m5_jax.stage_runner.run_stage (same done-markers, same skip), with CPU seconds measured per
  child (os.wait4): the demo's RUSAGE_CHILDREN delta is process-wide, so cells running
  in threads side by side would count each other's stages. Raises RuntimeError on failure."""
  done_before = stage_runner.done_timing(directory, name)
  if done_before is not None:
    timings[name] = {**done_before, 'skipped': True}
    return
  log(f'{os.path.basename(directory)}/{name}: $ {shlex.join(cmd)}')
  wall0 = time.perf_counter()
  process = subprocess.Popen(cmd, env={**os.environ, **env})
  _, status, usage = os.wait4(process.pid, 0)
  process.returncode = os.waitstatus_to_exitcode(status)
  if process.returncode != 0:
    raise RuntimeError(f'stage {name} failed (exit {process.returncode}): {shlex.join(cmd)}')
  timing = {'wall_s': round(time.perf_counter() - wall0, 1),
            'cpu_s': round(usage.ru_utime + usage.ru_stime, 1)}
  timings[name] = timing
  log(f'{os.path.basename(directory)}/{name}: done in {timing["wall_s"]:.0f} s '
      f'({timing["cpu_s"]:.0f} CPU s)')
  stage_runner.mark_done(directory, name, cmd, timing)


# ----------------------------------------------------------------------------- one cell


def _sets(workdir: str, task: str, feature: str | None, strip_prefix: str = '') -> dict | None:
  """{set label: metrics} of the task's latest evaluated step (None if not evaluated).

  `feature`: the --feature the binary ran with (its results folder depends on it);
  None for a fine-tuned classifier's own head.
  """
  from m5_jax.evaluate import report, runner  # pylint: disable=g-import-not-at-top
  variant = runner.variant_of(runner.Options(feature=feature)) if feature else ''
  found = report.load_step(workdir, task, variant=variant)
  if found is None:
    return None
  return {label[len(strip_prefix):] if label.startswith(strip_prefix) else label: metrics
          for label, metrics in found.get('sets', {}).items()}


def collect_cell(config, cell: cells_lib.Cell, paths: cells_lib.Paths, timings: dict) -> dict:
  """The cell's numbers from its eval outputs, as tables.py reads them."""
  out = {'cell': cell.name, 'method': cell.method, 'letters': cell.letters, 'seed': cell.seed,
         'label': cell.label, 'tables': list(cell.tables), 'timings': timings}
  runs = {'pretrained': paths.run(cell, 'pretrained'), 'random_init': paths.run(cell, 'random_init'),
          'finetuned': paths.run(cell, 'finetuned')}
  for run, workdir in runs.items():
    tasks = cells_lib.eval_tasks(config, cell, 'finetuned' if run == 'finetuned' else 'pretrained')
    found = {}
    for task in tasks:
      if run == 'finetuned' and task == 'classification':
        sets = _sets(paths.run(cell, 'finetune'), task, None, strip_prefix='finetuned ')
      else:
        sets = _sets(workdir, task, config.pretrain.feature)
      if sets is not None:
        found[task] = sets
    if found:
      out[run] = found
  out['pretraining_loss'] = demo_results.training_losses(runs['pretrained'])
  return out


def run_cell(config, cell: cells_lib.Cell, paths: cells_lib.Paths, classes: int,
             env: dict) -> dict:
  """Runs the cell's unfinished stages; returns (and writes) its result."""
  directory = paths.cell(cell)
  result_path = os.path.join(directory, RESULT)
  if os.path.isfile(result_path):
    with open(result_path) as f:
      return json.load(f)
  os.makedirs(directory, exist_ok=True)
  lock = _lock_cell(directory, cell.name)
  try:
    timings: dict = {}
    for name, cmd in cells_lib.cell_stages(config, cell, paths, classes, sys.executable):
      try:
        run_stage(name, cmd, directory, timings, env)
      except RuntimeError as e:  # fail this cell only
        raise RuntimeError(f'{cell.name}: {e}') from None
    result = collect_cell(config, cell, paths, timings)
    tmp = result_path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(result, f, indent=1, ensure_ascii=False)
    os.replace(tmp, result_path)
  finally:
    os.remove(lock)
  return result


def _lock_cell(directory: str, name: str) -> str:
  """Claims the cell for this process (DIR/cells/<cell>/.lock holds the pid), so two
  matrix processes on one workdir (e.g. with different --only) never run one cell twice.
  A lock whose process is gone is taken over."""
  path = os.path.join(directory, '.lock')
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      with open(path) as f:
        owner = int(f.read().strip() or 0)
      try:
        os.kill(owner, 0)
      except ProcessLookupError:
        os.remove(path)  # stale: its process died
        continue
      raise RuntimeError(f'{name}: running in another process (pid {owner}, {path})') from None
    with os.fdopen(fd, 'w') as f:
      f.write(str(os.getpid()))
    return path
  raise RuntimeError(f'{name}: could not take the lock {path}')


def run_cells(config, todo: list[cells_lib.Cell], paths: cells_lib.Paths, classes: int,
              parallel: int, env: dict) -> tuple[dict, dict]:
  """({cell: result}, {cell: error}), running `parallel` cells at a time with progress."""
  results, errors = {}, {}
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
    futures = {pool.submit(run_cell, config, c, paths, classes, env): c for c in todo}
    for future in concurrent.futures.as_completed(futures):
      cell = futures[future]
      try:
        results[cell.name] = future.result()
      except Exception as e:  # pylint: disable=broad-except
        errors[cell.name] = str(e)
        log(f'cell {cell.name} FAILED: {e}')
      done = len(results) + len(errors)
      elapsed = time.perf_counter() - start
      eta = elapsed / done * (len(todo) - done)
      log(f'{done}/{len(todo)} cells finished ({cell.name}); {elapsed / 60:.1f} min elapsed, '
          f'ETA {eta / 60:.1f} min')
  return results, errors


def _partial_result(config, cell: cells_lib.Cell, paths: cells_lib.Paths) -> dict | None:
  """An unfinished cell's numbers so far (None before its first evaluation)."""
  if not os.path.isfile(os.path.join(paths.run(cell, 'pretrained'), 'metrics.jsonl')):
    return None
  done = os.path.join(paths.cell(cell), '.done')
  timings = {name: stage_runner.done_timing(paths.cell(cell), name)
             for name in (sorted(os.listdir(done)) if os.path.isdir(done) else [])}
  result = collect_cell(config, cell, paths, timings)
  if 'pretrained' not in result:
    return None
  result['partial'] = True
  return result


# ----------------------------------------------------------------------------- export


def _overlay(base, update):
  """`base` with every leaf that `update` has replaced by update's (nested dicts)."""
  if not isinstance(base, dict):
    return update
  unknown = set(update) - set(base)
  if unknown:
    raise ValueError(f'export_backbone: fine-tuned parameters {sorted(unknown)} are not in '
                     'the pretraining run (different model config?)')
  return {k: _overlay(v, update[k]) if k in update else v for k, v in base.items()}


def export_backbone(argv) -> int:
  """The `export_backbone` subcommand (see the module docstring)."""
  import argparse  # pylint: disable=g-import-not-at-top
  from m5_jax import checkpointing  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='m5_jax.benchmark_matrix export_backbone')
  parser.add_argument('--finetune', required=True, help='classification fine-tuning workdir')
  parser.add_argument('--pretrained', required=True, help='its pretraining workdir (config)')
  parser.add_argument('--workdir', required=True, help='output workdir')
  args = parser.parse_args(argv)
  step, params = checkpointing.restore_params(args.finetune)
  if 'backbone' not in params:
    sys.exit(f'export_backbone: {args.finetune} step {step} has no backbone parameters '
             f'(top-level keys: {sorted(params)}); is it a classification fine-tuning run?')
  # The classifier builds its backbone without the masked-modeling heads; the
  # eval binaries build the pretraining model, heads included: those (unused for
  # features) keep their pretrained values.
  _, pretrained = checkpointing.restore_params(args.pretrained)
  merged = _overlay(pretrained, params['backbone'])
  config = config_lib.load_workdir_config(args.pretrained)
  config_lib.save_workdir_config(config, args.workdir)
  checkpointer = checkpointing.Checkpointer(args.workdir, config.checkpoint)
  checkpointer.save(step, {'params': merged}, force=True)
  checkpointer.close()
  print(f'export_backbone: {args.finetune} step {step} backbone -> {args.workdir}')
  return 0


# ----------------------------------------------------------------------------- main


def _data_timings(work: str) -> dict:
  """{stage: timing} of the data stages, from their done-markers."""
  timings = {name: stage_runner.done_timing(os.path.join(work, 'data'), name)
             for name in ('make_mini', 'tfds_build', 'tokenizer')}
  return {name: timing for name, timing in timings.items() if timing is not None}


def write_tables(config, work: str, results: dict, errors: dict, command: str) -> str:
  header = (f'# Benchmark matrix on M5Product-mini\n\n`{command}`\n\n'
            f'{config.data.num_products} products ({config.data.form} form); pretraining '
            f'{config.pretrain.steps} steps x batch {config.pretrain.batch_size} at lr '
            f'{config.pretrain.lr} ({config.pretrain.size} model); fine-tuning '
            f'{config.finetune.steps} steps x batch {config.finetune.batch_size} at lr '
            f'{config.finetune.lr}; eval features `{config.pretrain.feature}`.')
  if errors:
    header += '\n\nFailed cells (re-run the command to retry): ' + ', '.join(
        f'{k} ({v})' for k, v in errors.items())
  partial = [k for k, r in results.items() if r.get('partial')]
  if partial:
    header += ('\n\nUnfinished cells, shown with the stages they completed: '
               + ', '.join(sorted(partial)))
  ordered = {k: results[k] for k in sorted(results)}
  text = tables.render(ordered, header, _data_timings(work))
  with open(os.path.join(work, 'matrix.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(work, 'matrix.json'), 'w') as f:
    json.dump({'command': command, 'config': config.to_dict(), 'cells': ordered,
               'errors': errors, 'findings': tables.findings(ordered)}, f, indent=1,
              ensure_ascii=False, default=str)
  return text


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ['export_backbone']:
    return export_backbone(argv[1:])
  try:
    config, flags = config_lib.parse_command_line(
        argv, {'workdir': '', 'parallel': 1, 'only': '', 'dry_run': False,
               'tables_only': False}, __doc__)
    if not flags['workdir']:
      raise config_lib.ConfigError('--workdir DIR is required')
    if flags['parallel'] < 1:
      raise config_lib.ConfigError('--parallel must be >= 1')
    all_cells = cells_lib.enumerate_cells(config)
    names = [c.name for c in all_cells]
    only = [n for n in flags['only'].split(',') if n]
    unknown = [n for n in only if n not in names]
    if unknown:
      raise config_lib.ConfigError(f'--only: unknown cell(s) {unknown}; cells: {", ".join(names)}')
  except (config_lib.ConfigError, ValueError) as e:
    config_lib.exit_with(e, 'm5_jax.benchmark_matrix')
    return 2
  work = os.path.abspath(flags['workdir'])
  paths = cells_lib.Paths(work)
  todo = [c for c in all_cells if not only or c.name in only]
  py = sys.executable
  tfds_cli = os.path.join(os.path.dirname(py), 'tfds')
  data = cells_lib.data_stages(config, paths, py, tfds_cli, stage_runner.builder_dir())
  if flags['dry_run']:
    for name, cmd in data:
      print(f'data/{name}: {" ".join(cmd)}')
    for cell in todo:
      for name, cmd in cells_lib.cell_stages(config, cell, paths, 0, py):
        print(f'{cell.name}/{name}: {" ".join(cmd)}')
    return 0

  os.makedirs(work, exist_ok=True)
  start = time.perf_counter()
  results, errors = {}, {}
  if not flags['tables_only']:
    env = subprocess_env(work, flags['parallel'])
    data_timings: dict = {}
    for name, cmd in data:  # the data stages use every core: run them first, one at a time
      try:
        run_stage(name, cmd, os.path.join(work, 'data'), data_timings, subprocess_env(work, 1))
      except RuntimeError as e:
        sys.exit(f'm5_jax.benchmark_matrix: data {e}')
    classes = num_classes(paths)
    finished = [c for c in todo if os.path.isfile(os.path.join(paths.cell(c), RESULT))]
    log(f'{len(todo)} cells ({len(finished)} finished before), {flags["parallel"]} at a time: '
        + ', '.join(c.name for c in todo))
    results, errors = run_cells(config, todo, paths, classes, flags['parallel'], env)
  # Cells finished in earlier runs but outside --only still belong in the tables;
  # --tables_only also shows the evaluated part of unfinished cells, marked partial.
  for cell in all_cells:
    path = os.path.join(paths.cell(cell), RESULT)
    if cell.name not in results and os.path.isfile(path):
      with open(path) as f:
        results[cell.name] = json.load(f)
    elif cell.name not in results and flags['tables_only']:
      partial = _partial_result(config, cell, paths)
      if partial:
        results[cell.name] = partial
  command = 'python -m m5_jax.benchmark_matrix ' + ' '.join(argv)
  text = write_tables(config, work, results, errors, command)
  print(text)
  log(f'{len(results)} cells in the tables, {len(errors)} failed; '
      f'{(time.perf_counter() - start) / 60:.1f} min. Wrote {work}/matrix.md and matrix.json')
  return 1 if errors else 0


if __name__ == '__main__':
  sys.exit(main())
