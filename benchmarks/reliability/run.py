r"""The reliability suite at full size, with its figures recorded.

    python benchmarks/reliability/run.py [--num_products 500] [--faults 1000] [--seeds 0,1] \
        [--results benchmarks/results/reliability.md] [--skip_tests] \
        [--sections fuzz,build,config,checkpoint]

1. Corrupted-release fuzz at scale: M5Product-mini (`make_mini --features`,
   --num_products items) is generated once; for each seed, `data_prep.fuzz_release`
   injects --faults faults of its 15 kinds into a copy, both TFDS configs (raw,
   features) are built, and the builds are reconciled with the fault manifest:
   faults injected, faults seen by each config, faults survived (accounted for
   exactly as expected), items lost (must be 0), report mismatches (must be 0).
2. Release-build defects (benchmarks/reliability/build_faults.py, issue 16): links
   out of a media folder, ids past int64, an empty split list, no splits/ folder,
   a BOM in a list; each on a 6-item release: tried, survived, items lost.
3. Argument and config defects (benchmarks/reliability/config_faults.py, issue 16): each
   bad value or path run through the real binary: one stderr line, within seconds, no
   checkpoint. Checkpoint and process defects (checkpoint_faults.py): a half-deleted
   step under an evaluator --all, a damaged latest step at restart, a failed save, a
   second trainer, SIGTERM during start-up, a resume with another model, evaluators
   under SLURM. Each: tried, survived, items lost.
4. The fault tests (preemption at random steps and during an async save, kill -9
   mid-save with a watching evaluator, non-finite loss stop/skip, bad configs,
   unwritable workdir, disk full) run through pytest; their outcome and time are
   recorded. They are the tests CI runs, plus the slow ones (the fuzzed release
   through the Beam path).

Writes the figures to --results (Markdown) with the command, date and machine.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from benchmarks import machine  # noqa: E402  pylint: disable=g-import-not-at-top
from data_prep import fuzz_reconcile  # noqa: E402  pylint: disable=g-import-not-at-top
from data_prep import fuzz_release  # noqa: E402  pylint: disable=g-import-not-at-top
from benchmarks.reliability import build_faults  # noqa: E402  pylint: disable=g-import-not-at-top
from benchmarks.reliability import checkpoint_faults  # noqa: E402  pylint: disable=g-import-not-at-top
from benchmarks.reliability import config_faults  # noqa: E402  pylint: disable=g-import-not-at-top

FAULT_TESTS = ('tests/test_build_faults.py', 'tests/test_reliability_train.py',
               'tests/test_reliability_checkpoint.py', 'tests/test_reliability_config.py', 'tests/test_reliability_fuzz.py',
               'tests/test_train.py::test_sigterm_then_restart_is_bitwise_equal_to_uninterrupted',
               'tests/test_checkpointing.py::test_a_checkpoint_killed_mid_save_is_never_chosen')


NOTES = (
    'How each fault is made (what is real and what is simulated):',
    '',
    '- Preemption: a real SIGTERM to the training process (the train binary\'s handler), '
    'at 3 seeded random steps and once while an async checkpoint save is in flight (its '
    'temporary directory seen); the loop runs in the test process so restarts reuse the '
    'compiled step. The existing test_train test signals the real binary as a subprocess.',
    '- kill -9 mid-save: a real SIGKILL to a writer process while an evaluator runs the eval '
    'runner\'s --watch loop (m5_jax/evaluate/runner.run with checkpointing.list_steps).',
    '- Non-finite loss: text token ids past the vocabulary in the batch of step k (the '
    'embedding lookup gives NaN).',
    '- Disk full: (a) real: RLIMIT_FSIZE makes the kernel refuse to grow a checkpoint file '
    '(EFBIG, as ENOSPC would); (b) simulated: Orbax\'s array-writing coroutine raises ENOSPC '
    'during a train-loop save. Unwritable workdir: a path under a regular file (the tests run '
    'as root, so a chmod-ed directory is skipped there).',
)


def _log(message: str) -> None:
  print(f'[reliability {time.strftime("%H:%M:%S")}] {message}', flush=True)


def fuzz_at_scale(work: str, num_products: int, num_faults: int, seeds) -> list[dict]:
  base = os.path.join(work, 'mini')
  _log(f'make_mini: {num_products} items with features')
  start = time.time()
  subprocess.run([sys.executable, '-m', 'data_prep.make_mini', '--out', base, '--num_products',
                  str(num_products), '--seed', '0', '--features'], check=True, cwd=REPO)
  _log(f'make_mini done in {time.time() - start:.0f} s')
  rows = []
  for seed in seeds:
    out = os.path.join(work, f'fuzzed_{seed}')
    manifest = fuzz_release.fuzz(base, out, num_faults, seed=seed)
    counts = manifest['counts']
    _log(f'seed {seed}: injected {counts["faults"]} faults of {len(counts["by_kind"])} kinds '
         f'({counts["clones"]} clones)')
    row = {'seed': seed, 'faults': counts['faults'], 'kinds': len(counts['by_kind']),
           'by_kind': counts['by_kind'], 'clones': counts['clones'],
           'items': num_products + counts['clones']}
    failed = set()
    for config in fuzz_release.CONFIGS:
      start = time.time()
      result = fuzz_reconcile.build_and_reconcile(out, os.path.join(work, f'tfds_{seed}'), config)
      row[config] = dict(result, seconds=round(time.time() - start, 1),
                         mismatches=len(result['mismatches']),
                         first_mismatches=result['mismatches'][:5])
      _log(f'seed {seed} {config}: visible {result["faults_visible"]}, survived '
           f'{result["faults_survived"]}, items lost {result["items_lost"]}, mismatches '
           f'{len(result["mismatches"])} ({row[config]["seconds"]} s)')
      failed.update(result['failed_faults'])
    # A fault survived when every config that sees it accounted for it exactly.
    row['survived'] = counts['faults'] - len(failed)
    row['items_lost'] = sum(row[c]['items_lost'] for c in fuzz_release.CONFIGS)
    rows.append(row)
    shutil.rmtree(os.path.join(work, f'tfds_{seed}'), ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
  return rows


def build_defects(work: str) -> list[dict]:
  """Each release-build defect case, built once: {'case', 'what', 'tried', 'survived', ...}."""
  rows = []
  cases_dir = os.path.join(work, 'build_faults')
  for case in build_faults.CASES:
    result = build_faults.run_case(case, cases_dir)
    outcome = (result['error'] or 'built').replace(os.path.join(cases_dir, case.name), 'R')
    rows.append({'case': case.name, 'what': case.what, 'tried': case.faults,
                 'survived': case.faults if result['survived'] else 0,
                 'items_lost': result['items_lost'], 'problems': result['problems'],
                 'outcome': outcome, 'seconds': result['seconds']})
    _log(f'build defect {case.name}: survived {rows[-1]["survived"]}/{case.faults}, items lost '
         f'{result["items_lost"]}{"; " + "; ".join(result["problems"]) if result["problems"] else ""}')
  return rows


def config_defects(work: str) -> list[dict]:
  """Each argument case through its real binary: {'case', 'tried', 'survived', ...}."""
  rows = []
  folder = os.path.join(work, 'config_faults')
  os.makedirs(folder, exist_ok=True)
  for name, (binary, *_) in config_faults.CASES.items():
    result = config_faults.run_case(name, folder)
    rows.append({'case': name, 'what': binary, 'tried': 1, 'survived': int(result['survived']),
                 'items_lost': 0, 'problems': result['problems'],
                 'outcome': result['line'].replace(folder, 'W'), 'seconds': result['seconds']})
    _log(f'config defect {name}: {"survived" if result["survived"] else "FAILED"} in '
         f'{result["seconds"]} s{"; " + "; ".join(result["problems"]) if result["problems"] else ""}')
  return rows


def checkpoint_defects(work: str) -> list[dict]:
  """Each checkpoint/process case: {'case', 'what', 'tried', 'survived', 'items_lost', ...}."""
  rows = []
  folder = os.path.join(work, 'checkpoint_faults')
  os.makedirs(folder, exist_ok=True)
  for case in checkpoint_faults.CASES:
    result = case.run(folder)
    rows.append({'case': case.name, 'what': case.what, 'tried': 1,
                 'survived': int(result['survived']), 'items_lost': result['items_lost'],
                 'problems': result['problems'],
                 'outcome': result['outcome'].replace(folder, 'W'), 'seconds': result['seconds']})
    _log(f'checkpoint defect {case.name}: {"survived" if result["survived"] else "FAILED"}, '
         f'items lost {result["items_lost"]}'
         f'{"; " + "; ".join(result["problems"]) if result["problems"] else ""}')
  return rows


def _defect_table(title: str, intro: str, rows: list[dict]) -> list[str]:
  lines = ['', f'## {title}', '', intro, '',
           '| defect | what | tried | survived | items lost | outcome | s |',
           '|---|---|---:|---:|---:|---|---:|']
  for d in rows:
    outcome = d['outcome'].replace('|', '/')
    lines.append(f"| {d['case']} | {d['what']} | {d['tried']} | {d['survived']} | "
                 f"{d['items_lost']} | {outcome} | {d['seconds']} |")
  totals = [sum(d[k] for d in rows) for k in ('tried', 'survived', 'items_lost')]
  lines.append(f'| **total** | | {totals[0]} | {totals[1]} | {totals[2]} | | |')
  return lines + [f"- {d['case']}: {p}" for d in rows for p in d['problems']]


def run_fault_tests() -> dict:
  _log('pytest: ' + ' '.join(FAULT_TESTS))
  start = time.time()
  proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:logging',
                         '-m', 'slow or not slow', '--durations=0', *FAULT_TESTS],
                        cwd=REPO, capture_output=True, text=True)
  lines = proc.stdout.splitlines()
  summary = next((l for l in reversed(lines) if ' passed' in l or ' failed' in l), '?')
  durations = [l for l in lines if l.strip().split(' ')[0].endswith('s') and '::' in l
               and ' call ' in l]
  seeds = [l.strip() for l in lines if l.startswith('[preemption]')]
  return {'returncode': proc.returncode, 'summary': summary.strip('= '), 'durations': durations,
          'preemption': seeds, 'seconds': round(time.time() - start, 1),
          'tail': '\n'.join(lines[-30:]) if proc.returncode else ''}


def write_results(path: str, command: str, info: dict, rows: list[dict], tests: dict | None,
                  defects: list[dict] = (), config_rows: list[dict] = (),
                  checkpoint_rows: list[dict] = ()):
  lines = [
      '# Reliability: faults injected, survived, items lost',
      '',
      f'`{command}`',
      '',
      f'Date {info["date"]}; {info["cpu"]}, {info["cores"]} cores, {info["memory_gib"]} GiB; '
      f'Python {info["python"]}; load average at start {info["load_avg_1m"]} (a shared machine).',
      '',
      '## Corrupted-release fuzz (data_prep/fuzz_release.py)',
      '',
      'Each fault hits one healthy (item, slot) of a copy of M5Product-mini, or adds one listing; '
      'both TFDS configs are built and reconciled with the fault manifest. *Survived*: every '
      'config that sees the fault accounted for it exactly (item written with the modality '
      'absent and counted under the expected reason, or rejected and counted under it). '
      '*Items lost*: listings neither written nor counted as rejected.',
      '',
      '| seed | items | faults injected | kinds | seen by raw | seen by features | faults survived'
      ' | items lost | report mismatches | raw build s | features build s |',
      '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in rows:
    lines.append(f'| {r["seed"]} | {r["items"]} | {r["faults"]} | {r["kinds"]} | '
                 f'{r["raw"]["faults_visible"]} | {r["features"]["faults_visible"]} | '
                 f'{r["survived"]} | {r["items_lost"]} | '
                 f'{r["raw"]["mismatches"] + r["features"]["mismatches"]} | '
                 f'{r["raw"]["seconds"]} | {r["features"]["seconds"]} |')
  if rows:
    total = collections.Counter()
    for r in rows:
      total.update(r['by_kind'])
    lines += ['', 'Faults by kind (all seeds): ' + ', '.join(
        f'{k} {n}' for k, n in sorted(total.items())) + '.']
    for r in rows:
      for config in fuzz_release.CONFIGS:
        for m in r[config]['first_mismatches']:
          lines.append(f'- seed {r["seed"]} {config}: {m}')
  if defects:
    lines += ['', '## Release-build defects (benchmarks/reliability/build_faults.py)', '',
              'One 6-item release per defect, built with the `raw` config (plain path). '
              '*Survived*: the build did what the dataset card says (modality absent and '
              'counted, id hashed, split skipped and reported, or a one-line error naming the '
              'missing lists); a case survives all its defects or none. *Items lost*: '
              'listings neither written nor counted as rejected.', '',
              '| defect | what | tried | survived | items lost | outcome | s |',
              '|---|---|---:|---:|---:|---|---:|']
    for d in defects:
      outcome = d['outcome'].replace('|', '/')
      lines.append(f"| {d['case']} | {d['what']} | {d['tried']} | {d['survived']} | "
                   f"{d['items_lost']} | {outcome} | {d['seconds']} |")
    lines += [f"- {d['case']}: {p}" for d in defects for p in d['problems']]
  if config_rows:
    lines += _defect_table(
        'Argument and config defects (benchmarks/reliability/config_faults.py)',
        'Each bad value or path given to the real binary (`python -m m5_jax.train ...` or an '
        'eval binary; W is the case folder). *Survived*: the expected exit code, exactly one '
        f'stderr line naming the field and its valid choices, within '
        f'{config_faults.MAX_SECONDS} s (before any data read or compile), no checkpoint '
        'written.', config_rows)
  if checkpoint_rows:
    lines += _defect_table(
        'Checkpoint and process defects (benchmarks/reliability/checkpoint_faults.py)',
        '*Survived*: what issue 16 asks (skip or move aside a damaged step loudly, exit '
        'promptly, refuse a second trainer in one line, exit 0 on SIGTERM, one line for '
        'another model, one evaluator). *Items lost*: readable checkpoint steps no longer '
        'restorable, or not evaluated.', checkpoint_rows)
  if tests is not None:
    lines += ['', '## Fault tests (pytest)', '', *NOTES, '',
              f'`pytest -m "slow or not slow" {" ".join(FAULT_TESTS)}`', '',
              f'Result: **{tests["summary"]}** in {tests["seconds"]} s.', '']
    lines += [f'- {p}' for p in tests['preemption']]
    if tests['durations']:
      lines += ['', 'Per test (call time):', '', '```'] + tests['durations'] + ['```']
    if tests['tail']:
      lines += ['', '```', tests['tail'], '```']
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  _log(f'wrote {path}')


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--num_products', type=int, default=500)
  parser.add_argument('--faults', type=int, default=1000)
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--results', default=os.path.join(REPO, 'benchmarks', 'results',
                                                        'reliability.md'))
  parser.add_argument('--skip_tests', action='store_true', help='no pytest fault tests')
  parser.add_argument('--sections', default='fuzz,build,config,checkpoint',
                      help='which defect sections to run (comma list; default all)')
  args = parser.parse_args()
  sections = set(args.sections.split(','))
  info = machine.describe()
  command = 'python benchmarks/reliability/run.py ' + ' '.join(sys.argv[1:])
  with tempfile.TemporaryDirectory(prefix='m5_reliability_') as work:
    rows = fuzz_at_scale(work, args.num_products, args.faults,
                         [int(s) for s in args.seeds.split(',') if s]) if 'fuzz' in sections else []
    defects = build_defects(work) if 'build' in sections else []
    config_rows = config_defects(work) if 'config' in sections else []
    checkpoint_rows = checkpoint_defects(work) if 'checkpoint' in sections else []
  tests = None if args.skip_tests else run_fault_tests()
  write_results(args.results, command.strip(), info, rows, tests, defects, config_rows,
                checkpoint_rows)
  failed = (any(r['items_lost'] or r['survived'] != r['faults'] for r in rows)
            or any(d['items_lost'] or d['survived'] != d['tried']
                   for d in [*defects, *config_rows, *checkpoint_rows])
            or (tests is not None and tests['returncode'] != 0))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
