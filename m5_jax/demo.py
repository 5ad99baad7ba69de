r"""The end-to-end demo on M5Product-mini: `make demo [WORKDIR=demo]`.

Each stage is one of the README's commands, run as a subprocess exactly as a
user would type it (printed before it runs), so the demo doubles as a check that
those commands work:

  1. python -m data_prep.make_mini          generate the synthetic release (4000
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
import codecs
import importlib.util
import json
import os
import re
import resource
import select
import shlex
import shutil
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
# Mini's single listings spread for evaluation: at the default 4000 items this gives
# ~510 coarse queries, ~330 fine queries and ~410 cls_test items, enough for 95%
# intervals of about +-5 points (mini's own default keeps most items for pretraining).
MINI_SPLIT_WEIGHTS = ('pretrain=0.2,coarse_query=0.25,coarse_gallery=0.2,fine_gallery=0.05,'
                      'cls_train=0.1,cls_test=0.2')


# ----------------------------------------------------------------------------- stage output

LINE_WIDTH = 120  # the short view's progress and command lines
RESULT_WIDTH = 160  # a stage's result line (it names where the stage wrote)
PROGRESS_STEP = 0.2  # not a terminal: a progress line per this share of a bar
FAILURE_TAIL = 30  # log lines shown for a failing stage
_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
_CURSOR_UP = '\x1b[A'  # tqdm's nested bars (tfds build's per-split ones) move up to draw
_LOG_PREFIX = re.compile(r'^\d{4}-\d\d-\d\d [\d:,]+ (?:INFO|WARNING|ERROR) ')
_COMPILING = re.compile(r'\bcompiling\b', re.IGNORECASE)
# `step 120/300 ...` (train), `make_mini: 65/300 items, ...`, `label:  43%|###  | 3/7 [...]` (tqdm).
_STEP = re.compile(r'\bstep (\d+)/(\d+)\b')
_COUNTED = re.compile(r'^([\w.]+): (\d+)/(\d+) (?:items|examples|sentences)\b')
_TQDM = re.compile(r'^(.{1,80}?):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[([^\]]*)\]')
# A stage's own result line: make_mini, tfds build, tokenizer, train (both kinds of run).
_RESULT = re.compile(r'wrote \d+ items to|prepared to|^tokenizer: \S+ \(|^trained to step'
                     r'|^nothing to train')


def _clip(text: str, width: int = LINE_WIDTH) -> str:
  return text if len(text) <= width else text[:width - 1] + '…'


def _progress(text: str) -> tuple[str, str, float] | None:
  """(bar name, line to show, fraction done) of a progress line, else None."""
  if match := _STEP.search(text):
    done, total = int(match[1]), int(match[2])
    return 'step', text[match.start():], done / max(total, 1)
  if match := _COUNTED.search(text):
    return match[1], text, int(match[2]) / max(int(match[3]), 1)
  if match := _TQDM.search(text):
    done, total = int(match[2]), int(match[3])
    return match[1], f'{match[1]}: {done}/{total} [{match[4]}]', done / max(total, 1)
  return None


class StageView:
  """The short view of one stage's output: "compiling...", progress lines (updated in
  place on a terminal, else one per PROGRESS_STEP of a bar's progress) and the stage's result
  line; everything else stays in the stage's log."""

  def __init__(self, stream, tty: bool, shorten=lambda text: text):
    self.stream, self.tty, self.shorten = stream, tty, shorten
    self.width = (min(LINE_WIDTH, shutil.get_terminal_size().columns - 1) if tty
                  else LINE_WIDTH)
    self.on_screen = 0  # length of the in-place line (terminal)
    self.bar, self.shown_steps = None, 0  # PROGRESS_STEPs of the current bar shown
    self.compiling_shown = False
    self.status = 'running...'  # what `tick` shows until a progress line replaces it
    self.result: str | None = None

  def _show(self, text: str, *, in_place: bool, width: int | None = None) -> None:
    text = _clip('  ' + self.shorten(text), width or self.width)
    if self.tty and in_place:
      self.stream.write('\r' + text.ljust(self.on_screen))
      self.on_screen = len(text)
    else:
      self.clear()
      self.stream.write(text + '\n')
    self.stream.flush()

  def clear(self) -> None:
    """Erases the in-place line (terminal)."""
    if self.on_screen:
      self.stream.write('\r' + ' ' * self.on_screen + '\r')
      self.on_screen = 0

  def feed(self, segment: str) -> None:
    """One \\r- or \\n-terminated piece of the stage's output."""
    nested = _CURSOR_UP in segment
    text = _LOG_PREFIX.sub('', _ANSI.sub('', segment).strip())
    if not text:
      return
    if _COMPILING.search(text):
      if self.tty or not self.compiling_shown:
        self._show('compiling...', in_place=True)
      self.compiling_shown, self.status = True, 'compiling...'
    elif (progress := _progress(text)) and not nested:
      bar, line, fraction = progress
      self.status = None
      steps = int(fraction / PROGRESS_STEP + 1e-9)
      if bar != self.bar or steps < self.shown_steps:  # another bar, or it started over
        self.bar, self.shown_steps = bar, 0
      if self.tty:
        self._show(line, in_place=True)
      elif steps > self.shown_steps:
        self._show(line, in_place=False)
      self.shown_steps = max(self.shown_steps, steps)
    elif _RESULT.search(text):
      self.result = text

  def tick(self, elapsed_s: float) -> None:
    """A second without output: on a terminal, the status with the stage's time so far."""
    if self.tty and self.status:
      self._show(f'{self.status} {int(elapsed_s) // 60}:{int(elapsed_s) % 60:02d}',
                 in_place=True)

  def finish(self, line: str) -> None:
    self._show(line, in_place=False, width=RESULT_WIDTH)


def _screen_lines(text: str) -> list[str]:
  """What a terminal shows of `text`: each line's last \\r-separated part, no escapes."""
  lines = [_ANSI.sub('', line.rstrip('\r').split('\r')[-1]).rstrip() for line in
           text.split('\n')]
  return [line for line in lines if line.strip()]


def _short_command(cmd: list[str]) -> str:
  """The command on one line as a user would type it: `python` for this interpreter,
  `tfds` for its CLI."""
  shown = list(cmd)
  if shown and shown[0] == sys.executable:
    shown[0] = 'python'
  elif shown and os.path.basename(shown[0]) == 'tfds':
    shown[0] = 'tfds'
  return shlex.join(shown).replace('\n', '\\n')


# ----------------------------------------------------------------------------- stages


def _children_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _follow(process: subprocess.Popen, log, view: StageView | None, start: float) -> None:
  """Copies the process's output to `log` and to `view` (None: to the console as it is)
  as it comes; a second without output ticks the view's clock."""
  decoder, pending = codecs.getincrementaldecoder('utf-8')('replace'), ''
  output = process.stdout.fileno()
  while True:
    if not select.select([output], [], [], 1.0)[0]:
      if view:
        view.tick(time.perf_counter() - start)
      continue
    chunk = os.read(output, 1 << 16)
    text = decoder.decode(chunk, final=not chunk)
    log.write(text)
    if view is None:
      sys.stdout.write(text)
      sys.stdout.flush()
    else:
      *segments, pending = re.split(r'(?<=[\r\n])', pending + text)
      for segment in segments:
        view.feed(segment)
    if not chunk:
      break
  if view and pending:
    view.feed(pending)


def run_stage(name: str, cmd: list[str], workdir: str, timings: dict, *,
              env: dict | None = None, rerun: bool = False, verbose: bool = False,
              describe=None) -> None:
  """Runs one stage; records {wall_s, cpu_s} in `timings[name]`.

  Its output goes to WORKDIR/logs/<name>.log (headed by the full command); the console
  gets the short view (`StageView`) or, `verbose`, all of it. The result line is the
  stage's own (`_RESULT`), or `describe()` where given (the eval stages' headline).
  A stage that finished before (marker WORKDIR/.done/<name> holding its command
  and timings) is skipped unless `rerun`; a failing stage shows its log's last lines
  and ends the demo with its exit status and command.
  """
  marker = os.path.join(workdir, '.done', name)
  if not rerun and os.path.exists(marker):
    with open(marker) as f:
      timings[name] = {**json.load(f)['timing'], 'skipped': True}
    print(f'[demo] {name}: done before, skipped', flush=True)
    return
  work = os.path.abspath(workdir)
  shorten = lambda text: text.replace(work + os.sep, '$WORKDIR/')  # noqa: E731
  log_path = os.path.join(work, 'logs', f'{name}.log')
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  print(_clip(f'[demo] {name}: $ {shorten(_short_command(cmd))}', LINE_WIDTH)
        if not verbose else f'\n[demo] {name}: $ {shlex.join(cmd)}', flush=True)
  view = None if verbose else StageView(sys.stdout, sys.stdout.isatty(), shorten)
  wall0, cpu0 = time.perf_counter(), _children_cpu_s()
  with open(log_path, 'w', newline='') as log:
    log.write(f'$ {shlex.join(cmd)}\n')
    log.flush()
    with subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as process:
      _follow(process, log, view, wall0)
    returncode = process.returncode
  if returncode != 0:
    if view:
      view.clear()
      with open(log_path, errors='replace', newline='') as f:  # keep the \r of progress bars
        tail = _screen_lines(f.read())[-FAILURE_TAIL:]
      print('\n'.join(f'  | {line}' for line in tail))
    print(f'[demo] full log: {log_path}', flush=True)
    sys.exit(f'[demo] stage {name} failed (exit {returncode}): {shlex.join(cmd)}')
  timing = {'wall_s': round(time.perf_counter() - wall0, 1),
            'cpu_s': round(_children_cpu_s() - cpu0, 1)}
  timings[name] = timing
  done = f'done in {timing["wall_s"]:.0f} s'
  if view:
    result = describe() if describe else view.result
    if result is None and '--out' in cmd:
      result = f'wrote {cmd[cmd.index("--out") + 1]}'
    view.finish(f'{done}: {result}' if result else done)
  else:
    print(f'[demo] {name}: {done} ({timing["cpu_s"]:.0f} CPU s)', flush=True)
  os.makedirs(os.path.dirname(marker), exist_ok=True)
  with open(marker, 'w') as f:
    json.dump({'command': shlex.join(cmd), 'timing': timing}, f)


def builder_dir() -> str:
  """data_prep/m5product of this checkout (the demo may run from any directory)."""
  spec = importlib.util.find_spec('data_prep')
  return os.path.join(list(spec.submodule_search_locations)[0], 'm5product')


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
                                       '--overwrite'])
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


# ----------------------------------------------------------------------------- results


def latest_results(workdir: str, task: str, feature: str) -> dict:
  """The task's results of the latest step evaluated with `feature`, with 'units': the
  per-unit values saved beside them ({set: {name: array}}; {} for an older results file)."""
  from m5_jax.evaluate import report, runner  # pylint: disable=g-import-not-at-top
  variant = runner.variant_of(runner.Options(feature=feature))
  path = report.find_step(workdir, task, variant=variant)
  if path is None:
    sys.exit(f'[demo] no results in {runner.output_dir(workdir, task, variant)}')
  with open(path) as f:
    return {**json.load(f), 'units': report.load_units(path)}


def eval_headline(workdir: str, task: str, feature: str, modality_set: str) -> str:
  """An eval stage's result line: its HEADLINE metric on `modality_set` and how many items
  it averages over (the intervals are in the final table), and the folder it wrote."""
  from m5_jax.evaluate import report, runner  # pylint: disable=g-import-not-at-top
  variant = runner.variant_of(runner.Options(feature=feature))
  path = report.find_step(workdir, task, variant=variant)
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
    parts.append('TOO SMALL to separate 5 points (an interval reaching more than 5 points either side): '
                 + ', '.join(small) + '.')
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


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='m5_jax.demo', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default='demo')
  parser.add_argument('--num_products', type=int, default=4000)
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

  from m5_jax.evaluate import report as report_lib  # pylint: disable=g-import-not-at-top
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
            f'shows in their own verdicts). {report_lib.INTERVAL_NOTE}\n\n{losses}\n\n'
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
