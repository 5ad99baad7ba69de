r"""The end-to-end demo on M5Product-mini: `make demo [WORKDIR=demo]`.

Each stage is one of the README's commands, run as a subprocess exactly as a
user would type it (printed before it runs), so the demo doubles as a check that
those commands work:

  1. python -m data_prep.make_mini          generate the synthetic release (6000
                                            items, with pre-extracted features), or
                                            data_prep.make_realistic with --release
                                            realistic (real public media, raw form)
  2. python -m data_prep.tokenizer          train the sentencepiece model, into the
                                            release folder, where the builder finds it
  3. tfds build data_prep/m5product         convert it (config `features`, the
                                            paper's input form; array_record: the
                                            input pipeline reads by index), storing
                                            the titles' and tables' token ids
  per seed S of --seeds (config.seed = S, stage names end in _seed<S>):
  4. python -m m5_jax.train                 pretrain a tiny M5-MMT (five modalities)
  5. python -m m5_jax.train ... total_steps=0   the same model and seed, untrained:
                                            a step-0 checkpoint of random weights
  6. python -m m5_jax.evaluate.<task>       the four tasks, for both checkpoints
  7. python -m m5_jax.evaluate.report       the paper's tables

Everything lands under WORKDIR (seed S's runs in WORKDIR/seed<S>/m5_mmt and
WORKDIR/seed<S>/random_init); WORKDIR/results.json and WORKDIR/results.md put
pretrained and random weights side by side: each number with its 95% bootstrap
interval over the eval items, the paired difference (the same items resampled
for both runs) and its verdict, win / tie / loss, per seed and pooled over the
seeds. "Pretraining beats random weights" is claimed for a task only when every
seed wins. Each stage's wall and CPU seconds are there too. A finished stage is
skipped when the demo is re-run (delete WORKDIR to start over). The subprocesses
share a JAX compilation cache (WORKDIR/jax_cache), so the eval binaries compile
the forward pass once, not eight times.

Output: each stage's output goes to WORKDIR/logs/<stage>.log; the console shows
its command (shortened; the full one heads the log and is in WORKDIR/.done/<stage>),
"compiling...", its progress (in place on a terminal, else a line per 20%) and its
result, and a failing stage's last 30 log lines. --verbose shows everything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from m5_jax.demo_results import (TASKS, comparison_markdown, comparison_rows, eval_headline,
                                 headline, latest_results, resolve_set, timings_markdown,
                                 training_losses)
from m5_jax.stage_runner import builder_dir, run_stage

DEMO_CONFIG = 'configs/m5_mmt.py:size=tiny,modalities=itpva,runlocal'
# Mini's single listings spread for evaluation: at the default 6000 items this gives
# ~770 coarse queries, ~490 fine queries and ~610 cls_test items: 95% intervals of
# at most about +-5 points on every metric (at 4000 items, fine mAP@10's reached
# +-5.6). Mini's own default keeps most items for pretraining.
# The realistic release has fewer multi-listing products than mini: 3/4 of them go to
# fine retrieval (~480 queries at 4000 items) so that its interval separates 5 points.
REALISTIC_FINE_SHARE = '0.75'
MINI_SPLIT_WEIGHTS = ('pretrain=0.2,coarse_query=0.25,coarse_gallery=0.2,fine_gallery=0.05,'
                      'cls_train=0.1,cls_test=0.2')


# ----------------------------------------------------------------------------- stages


def stages(args, py: str = sys.executable) -> list[tuple[str, list[str]]]:
  """(name, command) of every stage, in order: the data, then each seed's runs."""
  work = os.path.abspath(args.workdir)
  release, tfds_dir = os.path.join(work, 'release'), os.path.join(work, 'tfds')
  tokenizer = os.path.join(release, 'spm.model')  # the builder's default: it stores token ids
  tfds_cli = os.path.join(os.path.dirname(py), 'tfds')
  config = f'{args.config},form={args.form},vocab_size={args.vocab_size}'
  data = ['--config', config, f'--config.input.data_dir={tfds_dir}',
          f'--config.input.tokenizer={tokenizer}', f'--config.input.batch_size={args.batch_size}']
  if args.release == 'realistic':
    # Real public media (data_prep/realistic): raw form only, and ~1100 distinct
    # characters, which a 1000-piece vocabulary covers only at 0.995.
    make_release = ('make_realistic', [py, '-m', 'data_prep.make_realistic', '--out', release,
                                       '--num_products', str(args.num_products), '--seed', '0',
                                       '--overwrite', '--fine_share', REALISTIC_FINE_SHARE])
    coverage = ['--character_coverage', '0.995']
  else:
    make_release = ('make_mini', [py, '-m', 'data_prep.make_mini', '--out', release,
                                  '--num_products', str(args.num_products), '--seed', '0',
                                  '--overwrite', '--split_weights', MINI_SPLIT_WEIGHTS,
                                  *(['--features'] if args.form == 'features' else [])])
    coverage = []
  plan = [
      make_release,
      ('tokenizer', [py, '-m', 'data_prep.tokenizer', '--manual_dir', release,
                     '--out', tokenizer, '--vocab_size', str(args.vocab_size), *coverage]),
      ('tfds_build', [tfds_cli, 'build', builder_dir(), '--manual_dir', release,
                      '--data_dir', tfds_dir, '--config', args.form,
                      '--file_format', 'array_record', '--overwrite']),
  ]
  compare = []
  for seed in range(args.seeds):
    pretrained, random_init = run_dirs(work, seed)
    seeded = [*data, f'--config.seed={seed}']
    plan += [
        (f'train_seed{seed}', [py, '-m', 'm5_jax.train', '--workdir', pretrained, *seeded,
                               f'--config.total_steps={args.steps}',
                               f'--config.optimizer.lr={args.lr}',
                               f'--config.schedule.warmup_steps={max(1, args.steps // 10)}',
                               f'--config.checkpoint.every_steps={args.steps}',
                               f'--config.log.every_steps={max(1, args.steps // 50)}']),
        # Same config and seed, nothing to train: a step-0 checkpoint of the
        # initial parameters this seed's pretrained run started from.
        (f'random_init_seed{seed}', [py, '-m', 'm5_jax.train', '--workdir', random_init,
                                     *seeded, '--config.total_steps=0']),
    ]
    for run_name, workdir in (('pretrained', pretrained), ('random_init', random_init)):
      for task in TASKS:
        plan.append((f'eval_{task}_{run_name}_seed{seed}',
                     [py, '-m', f'm5_jax.evaluate.{task}', '--workdir', workdir,
                      '--feature', args.feature]))
    compare += [f'random_weights_seed{seed}={random_init}', f'pretrained_seed{seed}={pretrained}']
  # One report over all seeds (its name says how many: another --seeds runs it again);
  # its paired table compares every run with the first, seed 0's random weights.
  plan.append((f'report_seeds{args.seeds}', [
      py, '-m', 'm5_jax.evaluate.report', '--workdir', run_dirs(work, 0)[0],
      '--compare', ','.join(compare), '--modality_set', args.modality_set,
      '--feature', args.feature, '--out', os.path.join(work, 'report.md')]))
  return plan


def run_dirs(work: str, seed: int) -> tuple[str, str]:
  """(pretrained, random-weights) workdirs of one seed."""
  return (os.path.join(work, f'seed{seed}', 'm5_mmt'),
          os.path.join(work, f'seed{seed}', 'random_init'))


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='m5_jax.demo', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default='demo')
  parser.add_argument('--num_products', type=int, default=6000)
  parser.add_argument('--steps', type=int, default=300, help='pretraining steps')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--lr', type=float, default=3e-3)
  parser.add_argument('--config', default=DEMO_CONFIG,
                      help='config file and args (form= and vocab_size= are appended)')
  parser.add_argument('--release', default='mini', choices=('mini', 'realistic'),
                      help='mini: synthetic (data_prep/make_mini); realistic: real public media '
                           '(data_prep/make_realistic, raw form only)')
  parser.add_argument('--form', default=None, choices=('features', 'raw'),
                      help="media input: the paper's pre-extracted features, or raw pixels/"
                           'frames/audio (slower)')
  parser.add_argument('--vocab_size', type=int, default=1000,
                      help="tokenizer vocabulary (mini's titles and tables need few pieces)")
  parser.add_argument('--feature', default='encoder_pooled', choices=('pooled', 'encoder_pooled'),
                      help='model output the eval binaries use (see docs/models.md)')
  parser.add_argument('--modality_set', default='all',
                      help="row of the side-by-side table, e.g. I+T ('all': every modality)")
  parser.add_argument('--seeds', type=int, default=2,
                      help='pretraining seeds (config.seed 0..N-1): each trains its own model '
                           'and random-weights checkpoint; the claim needs every seed to win')
  parser.add_argument('--rerun', action='store_true', help='run finished stages again')
  parser.add_argument('-v', '--verbose', action='store_true',
                      help="show every stage's full output (always in WORKDIR/logs/<stage>.log) "
                           'and every training metric')
  args = parser.parse_args(argv)
  if args.seeds < 1:
    parser.error(f'--seeds must be at least 1, got {args.seeds}')
  if args.form is None:  # mini's default: the paper's pre-extracted features
    args.form = 'raw' if args.release == 'realistic' else 'features'
  if args.release == 'realistic' and args.form != 'raw':
    parser.error('--release realistic has raw media only: use --form raw (the default for it)')
  return args


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else list(argv))
  work = os.path.abspath(args.workdir)
  os.makedirs(work, exist_ok=True)
  # One compilation cache for every stage: the eval binaries of all runs compile
  # the same forward pass.
  env = {'JAX_COMPILATION_CACHE_DIR': os.path.join(work, 'jax_cache'),
         'TF_CPP_MIN_LOG_LEVEL': os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2'),
         'PYTHONUNBUFFERED': '1'}  # progress lines arrive as they are printed
  timings: dict = {}
  start = time.perf_counter()
  print(f'[demo] WORKDIR={work}; each stage\'s full command and output: '
        f'$WORKDIR/logs/<stage>.log{"" if args.verbose else " (--verbose shows them here)"}',
        flush=True)
  for name, cmd in stages(args):
    describe = None
    if name.startswith('eval_'):
      task, workdir = cmd[2].rpartition('.')[2], cmd[cmd.index('--workdir') + 1]
      describe = (lambda w=workdir, t=task:  # noqa: E731
                  eval_headline(w, t, args.feature, args.modality_set))
    if args.verbose and cmd[1:3] == ['-m', 'm5_jax.train']:
      cmd = [*cmd, '--verbosity=1']  # every training metric on the console
    run_stage(name, cmd, work, timings, env=env, rerun=args.rerun, verbose=args.verbose,
              describe=describe)

  runs = {seed: {run_name: {t: latest_results(workdir, t, args.feature) for t in TASKS}
                 for run_name, workdir in zip(('pretrained', 'random_weights'),
                                              run_dirs(work, seed))}
          for seed in range(args.seeds)}
  rows = comparison_rows(runs, args.modality_set)
  claim = headline(rows)
  label = resolve_set(runs[0]['pretrained']['coarse_retrieval'], args.modality_set)
  losses_by_seed = {seed: training_losses(run_dirs(work, seed)[0]) for seed in runs}
  without_units = {f'seed{seed}': {run_name: {t: {k: v for k, v in r.items() if k != 'units'}
                                              for t, r in by_task.items()}
                                   for run_name, by_task in by_run.items()}
                   for seed, by_run in runs.items()}
  results = {'workdir': work, 'config': args.config, 'steps': args.steps,
             'batch_size': args.batch_size, 'num_products': args.num_products,
             'feature': args.feature, 'modality_set': label, 'seeds': args.seeds,
             'claim': claim, 'comparison': rows,
             'training_loss': {f'seed{seed}': v for seed, v in losses_by_seed.items()},
             'runs': without_units, 'timings': timings}
  with open(os.path.join(work, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1, ensure_ascii=False)

  from m5_jax.evaluate import tables as eval_tables  # pylint: disable=g-import-not-at-top
  comparison = comparison_markdown(rows, label)
  losses = '\n'.join(['| pretraining loss | seed | first step | last step |',
                      '|---|---|---:|---:|'] + [
      f'| {k} | {seed} | {a:.3g} | {b:.3g} |'
      for seed, terms in losses_by_seed.items() for k, (a, b) in terms.items()])
  with open(os.path.join(work, 'report.md')) as f:
    report = f.read()
  with open(os.path.join(work, 'results.md'), 'w') as f:
    f.write(f'# M5Product-{args.release} demo: pretrained vs random weights\n\n'
            f'{args.num_products} products; `{args.config}`, {args.steps} steps of batch '
            f'{args.batch_size}; features: `{args.feature}`; {args.seeds} seed(s), each its '
            f'own pretrained model and random-weights checkpoint.\n\n**{claim}**\n\n'
            f'{comparison}\n\nVerdict: win = the paired 95% interval of the difference is '
            f'above 0, loss = below 0, tie = it contains 0; pooled = each item\'s values averaged '
            f'over the seeds (its interval covers the eval items\' sampling; the seeds\' spread '
            f'shows in their own verdicts). {eval_tables.INTERVAL_NOTE}\n\n{losses}\n\n'
            f'## Paper tables (`m5_jax.evaluate.report`; seed 0 pretrained, then all runs)\n\n'
            f'{report}\n## Stages\n\n{timings_markdown(timings)}\n')

  # The console: the claim and the comparison (--verbose: also the losses and timings;
  # all of it is in results.md).
  details = f'{losses}\n\n{timings_markdown(timings)}\n\n' if args.verbose else ''
  print(f'\n{claim}\n\n{comparison}\n\n{details}', end='')
  print(f'Demo finished in {time.perf_counter() - start:.0f} s. Under {work}:')
  print('  results.json, results.md            numbers, paper-layout tables, training losses, '
        'stage timings')
  from m5_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  variant = runner.variant_of(runner.Options(feature=args.feature))
  plots = runner.output_dir(os.path.join('seed<S>', 'm5_mmt'), '<task>', variant)
  print(f'  {plots}/*.png   plots (P@K curves, PCA projection, long tail);'
        ' seed<S>/random_init/eval/ the same')
  print(f'  tensorboard --logdir {work}   training curves and eval scalars')
  return 0


if __name__ == '__main__':
  sys.exit(main())
