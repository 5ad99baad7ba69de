r"""The end-to-end demo on M5Product-mini: `make demo [WORKDIR=demo]`.

Each stage is one of the README's commands, run as a subprocess exactly as a
user would type it (printed before it runs), so the demo doubles as a check that
those commands work:

  1. python -m data_prep.make_mini          generate the synthetic release (2000
                                            items, with pre-extracted features)
  2. tfds build data_prep/m5product         convert it (config `features`, the
                                            paper's input form; array_record: the
                                            input pipeline reads by index)
  3. python -m data_prep.tokenizer          train the sentencepiece model
  4. python -m m5_jax.train                 pretrain a tiny M5-MMT (five modalities)
  5. python -m m5_jax.train ... total_steps=0   the same model and seed, untrained:
                                            a step-0 checkpoint of random weights
  6. python -m m5_jax.evaluate.<task>       the four tasks, for both checkpoints
  7. python -m m5_jax.evaluate.report       the paper's tables

Everything lands under WORKDIR; WORKDIR/results.json and WORKDIR/results.md put
pretrained and random weights side by side, with each stage's wall and CPU
seconds. A finished stage is skipped when the demo is re-run (delete WORKDIR to
start over). The subprocesses share a JAX compilation cache (WORKDIR/jax_cache),
so the eval binaries compile the forward pass once, not eight times.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shlex
import subprocess
import sys
import time

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
DEMO_CONFIG = 'configs/m5_mmt.py:size=tiny,modalities=itpva,runlocal'


# ----------------------------------------------------------------------------- stages


def _children_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run_stage(name: str, cmd: list[str], workdir: str, timings: dict, *,
              env: dict | None = None, rerun: bool = False) -> None:
  """Runs one stage, echoing the command; records {wall_s, cpu_s} in `timings[name]`.

  A stage that finished before (marker WORKDIR/.done/<name> holding its command
  and timings) is skipped unless `rerun`; a failing stage ends the demo with its
  exit status and command.
  """
  marker = os.path.join(workdir, '.done', name)
  if not rerun and os.path.exists(marker):
    with open(marker) as f:
      timings[name] = {**json.load(f)['timing'], 'skipped': True}
    print(f'[demo] {name}: done before, skipped ({marker})', flush=True)
    return
  print(f'\n[demo] {name}: $ {shlex.join(cmd)}', flush=True)
  wall0, cpu0 = time.perf_counter(), _children_cpu_s()
  result = subprocess.run(cmd, env={**os.environ, **(env or {})})
  if result.returncode != 0:
    sys.exit(f'[demo] stage {name} failed (exit {result.returncode}): {shlex.join(cmd)}')
  timing = {'wall_s': round(time.perf_counter() - wall0, 1),
            'cpu_s': round(_children_cpu_s() - cpu0, 1)}
  timings[name] = timing
  print(f'[demo] {name}: done in {timing["wall_s"]:.0f} s ({timing["cpu_s"]:.0f} CPU s)',
        flush=True)
  os.makedirs(os.path.dirname(marker), exist_ok=True)
  with open(marker, 'w') as f:
    json.dump({'command': shlex.join(cmd), 'timing': timing}, f)


def builder_dir() -> str:
  """data_prep/m5product of this checkout (the demo may run from any directory)."""
  spec = importlib.util.find_spec('data_prep')
  return os.path.join(list(spec.submodule_search_locations)[0], 'm5product')


def stages(args, py: str = sys.executable) -> list[tuple[str, list[str]]]:
  """(name, command) of every stage, in order."""
  work = os.path.abspath(args.workdir)
  release, tfds_dir = os.path.join(work, 'release'), os.path.join(work, 'tfds')
  tokenizer = os.path.join(work, 'spm.model')
  pretrained, random_init = run_dirs(work)
  tfds_cli = os.path.join(os.path.dirname(py), 'tfds')
  config = f'{args.config},form={args.form},vocab_size={args.vocab_size}'
  data = ['--config', config, f'--config.input.data_dir={tfds_dir}',
          f'--config.input.tokenizer={tokenizer}', f'--config.input.batch_size={args.batch_size}']
  plan = [
      ('make_mini', [py, '-m', 'data_prep.make_mini', '--out', release,
                     '--num_products', str(args.num_products), '--seed', '0', '--overwrite',
                     *(['--features'] if args.form == 'features' else [])]),
      ('tfds_build', [tfds_cli, 'build', builder_dir(), '--manual_dir', release,
                      '--data_dir', tfds_dir, '--config', args.form,
                      '--file_format', 'array_record', '--overwrite']),
      ('tokenizer', [py, '-m', 'data_prep.tokenizer', '--manual_dir', release,
                     '--out', tokenizer, '--vocab_size', str(args.vocab_size)]),
      ('train', [py, '-m', 'm5_jax.train', '--workdir', pretrained, *data,
                 f'--config.total_steps={args.steps}', f'--config.optimizer.lr={args.lr}',
                 f'--config.schedule.warmup_steps={max(1, args.steps // 10)}',
                 f'--config.checkpoint.every_steps={args.steps}',
                 f'--config.log.every_steps={max(1, args.steps // 50)}']),
      # Same config and seed, nothing to train: a step-0 checkpoint of the
      # initial parameters the pretrained run started from.
      ('random_init', [py, '-m', 'm5_jax.train', '--workdir', random_init, *data,
                       '--config.total_steps=0']),
  ]
  for run_name, workdir in (('pretrained', pretrained), ('random_init', random_init)):
    for task in TASKS:
      plan.append((f'eval_{task}_{run_name}',
                   [py, '-m', f'm5_jax.evaluate.{task}', '--workdir', workdir,
                    '--feature', args.feature]))
  plan.append(('report', [py, '-m', 'm5_jax.evaluate.report', '--workdir', pretrained,
                          '--compare', f'pretrained={pretrained},random_weights={random_init}',
                          '--modality_set', args.modality_set, '--feature', args.feature,
                          '--out', os.path.join(work, 'report.md')]))
  return plan


def run_dirs(work: str) -> tuple[str, str]:
  return os.path.join(work, 'm5_mmt'), os.path.join(work, 'random_init')


# ----------------------------------------------------------------------------- results


def latest_results(workdir: str, task: str, feature: str) -> dict:
  """The task's results of the latest step evaluated with `feature`."""
  from m5_jax.evaluate import report, runner  # pylint: disable=g-import-not-at-top
  variant = runner.variant_of(runner.Options(feature=feature))
  results = report.load_step(workdir, task, variant=variant)
  if results is None:
    sys.exit(f'[demo] no results in {runner.output_dir(workdir, task, variant)}')
  return results


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


def comparison_rows(results: dict, modality_set: str) -> list[tuple]:
  """(label, pretrained, random, items averaged over) per HEADLINE metric, one modality set."""
  rows = []
  for label, task, metric in HEADLINE:
    values = []
    for run_name in ('pretrained', 'random_weights'):
      task_results = results[run_name][task]
      values.append(task_results['sets'][resolve_set(task_results, modality_set)])
    rows.append((label, values[0].get(metric), values[1].get(metric),
                 values[0].get(COUNTS[task])))
  return rows


def comparison_markdown(rows, modality_set: str) -> str:
  fmt = lambda v: f'{v:.3g}' if isinstance(v, (int, float)) else 'n/a'  # noqa: E731
  lines = [f'| {modality_set} | pretrained | random weights | items |', '|---|---:|---:|---:|']
  lines += [f'| {label} | {fmt(a)} | {fmt(b)} | {fmt(n)} |' for label, a, b, n in rows]
  return '\n'.join(lines)


def timings_markdown(timings: dict) -> str:
  lines = ['| stage | wall s | CPU s |', '|---|---:|---:|']
  for name, t in timings.items():
    note = ' (earlier run)' if t.get('skipped') else ''
    lines.append(f'| {name}{note} | {t["wall_s"]:.0f} | {t["cpu_s"]:.0f} |')
  total_wall = sum(t['wall_s'] for t in timings.values())
  total_cpu = sum(t['cpu_s'] for t in timings.values())
  lines.append(f'| total | {total_wall:.0f} | {total_cpu:.0f} |')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='m5_jax.demo', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default='demo')
  parser.add_argument('--num_products', type=int, default=2000)
  parser.add_argument('--steps', type=int, default=300, help='pretraining steps')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--lr', type=float, default=3e-3)
  parser.add_argument('--config', default=DEMO_CONFIG,
                      help='config file and args (form= and vocab_size= are appended)')
  parser.add_argument('--form', default='features', choices=('features', 'raw'),
                      help="media input: the paper's pre-extracted features, or raw pixels/"
                           'frames/audio (slower)')
  parser.add_argument('--vocab_size', type=int, default=1000,
                      help="tokenizer vocabulary (mini's titles and tables need few pieces)")
  parser.add_argument('--feature', default='encoder_pooled', choices=('pooled', 'encoder_pooled'),
                      help='model output the eval binaries use (see docs/models.md)')
  parser.add_argument('--modality_set', default='all',
                      help="row of the side-by-side table, e.g. I+T ('all': every modality)")
  parser.add_argument('--rerun', action='store_true', help='run finished stages again')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else list(argv))
  work = os.path.abspath(args.workdir)
  os.makedirs(work, exist_ok=True)
  pretrained, random_init = run_dirs(work)
  # One compilation cache for every stage: the eval binaries of both runs compile
  # the same forward pass.
  env = {'JAX_COMPILATION_CACHE_DIR': os.path.join(work, 'jax_cache'),
         'TF_CPP_MIN_LOG_LEVEL': os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2')}
  timings: dict = {}
  start = time.perf_counter()
  for name, cmd in stages(args):
    run_stage(name, cmd, work, timings, env=env, rerun=args.rerun)

  results = {'workdir': work, 'config': args.config, 'steps': args.steps,
             'batch_size': args.batch_size, 'num_products': args.num_products,
             'feature': args.feature, 'modality_set': args.modality_set,
             'pretrained': {t: latest_results(pretrained, t, args.feature) for t in TASKS},
             'random_weights': {t: latest_results(random_init, t, args.feature) for t in TASKS},
             'timings': timings}
  rows = comparison_rows(results, args.modality_set)
  label = resolve_set(results['pretrained']['coarse_retrieval'], args.modality_set)
  results['training_loss'] = training_losses(pretrained)
  results['comparison'] = {name: {'pretrained': a, 'random_weights': b, 'items': n}
                           for name, a, b, n in rows}
  with open(os.path.join(work, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1, ensure_ascii=False)

  comparison = comparison_markdown(rows, label)
  losses = '\n'.join(['| pretraining loss | first step | last step |', '|---|---:|---:|'] + [
      f'| {k} | {a:.3g} | {b:.3g} |' for k, (a, b) in results['training_loss'].items()])
  with open(os.path.join(work, 'report.md')) as f:
    report = f.read()
  with open(os.path.join(work, 'results.md'), 'w') as f:
    f.write(f'# M5Product-mini demo: pretrained vs random weights\n\n'
            f'{args.num_products} products; `{args.config}`, {args.steps} steps of batch '
            f'{args.batch_size}; features: `{args.feature}`.\n\n{comparison}\n\n{losses}\n\n'
            f'## Paper tables (`m5_jax.evaluate.report`; pretrained run, then both)\n\n'
            f'{report}\n## Stages\n\n{timings_markdown(timings)}\n')

  print(f'\n{comparison}\n\n{losses}\n\n{timings_markdown(timings)}\n')
  print(f'Demo finished in {time.perf_counter() - start:.0f} s. Under {work}:')
  print('  results.json, results.md            numbers, paper-layout tables, stage timings')
  from m5_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  variant = runner.variant_of(runner.Options(feature=args.feature))
  plots = runner.output_dir('m5_mmt', '<task>', variant)
  print(f'  {plots}/*.png   plots (P@K curves, PCA projection, long tail);'
        ' random_init/eval/ the same')
  print(f'  tensorboard --logdir {work}   training curves and eval scalars')
  return 0


if __name__ == '__main__':
  sys.exit(main())
