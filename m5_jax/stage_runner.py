"""Stages: the README's commands run as subprocesses (m5_jax.demo, m5_jax.benchmark_matrix).

`run_stage` runs one command with a done-marker (WORKDIR/.done/<stage>: a finished
stage is skipped on a re-run), its output in WORKDIR/logs/<stage>.log and its wall
and CPU seconds; the console shows the command (shortened), "compiling...", its
progress (in place on a terminal, else a line per 20%), its result line, and a
failing stage's last log lines (`verbose`: everything).
"""
from __future__ import annotations

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


def done_timing(workdir: str, name: str) -> dict | None:
  """The timing recorded when stage `name` finished (its done-marker), None if it has not."""
  marker = os.path.join(workdir, '.done', name)
  if not os.path.isfile(marker):
    return None
  with open(marker) as f:
    return json.load(f)['timing']


def mark_done(workdir: str, name: str, cmd: list[str], timing: dict) -> None:
  """Records that stage `name` finished: WORKDIR/.done/<name> holds its command and timing."""
  marker = os.path.join(workdir, '.done', name)
  os.makedirs(os.path.dirname(marker), exist_ok=True)
  with open(marker, 'w') as f:
    json.dump({'command': shlex.join(cmd), 'timing': timing}, f)


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
  done_before = None if rerun else done_timing(workdir, name)
  if done_before is not None:
    timings[name] = {**done_before, 'skipped': True}
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
  mark_done(workdir, name, cmd, timing)


def builder_dir() -> str:
  """data_prep/m5product of this checkout (the demo may run from any directory)."""
  spec = importlib.util.find_spec('data_prep')
  return os.path.join(list(spec.submodule_search_locations)[0], 'm5product')
