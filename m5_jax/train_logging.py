"""Training metrics: clu writers (log, TensorBoard, JSON lines), throughput, MFU, ETA.

Only process 0 writes files (`<workdir>/tensorboard/` event files and
`<workdir>/metrics.jsonl`, one JSON object per logged step); other processes only
log to their own stderr. The console gets one short line per logged step
(`progress_line`: step, loss, examples/s, ETA); `verbose` logs every scalar instead.
Besides the step's metrics (each loss term, grad and param norms, learning rate)
every logged step gets:

  perf/steps_per_sec, perf/examples_per_sec   measured between two log points
  perf/mfu     model FLOPs utilisation = the train step's matmul FLOPs per device
               (`flops.matmul_flops`, counted on its jaxpr, scan bodies x their length)
               x steps/s divided by `config.log.peak_flops_per_device` (omitted
               when that is 0)
  perf/eta_hours
  perf/input_wait_ms     mean time a step waited for its batch (`next` on the input
                         iterator) since the last log point; a step running on the
                         devices meanwhile hides the input, so > 0 means a stall
  perf/input_wait_frac   that waiting as a share of the wall time between the two log
                         points; the progress line shows it (`input wait 12%`) when >= 1%
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping

import jax
from clu import metric_writers

METRICS_FILE = 'metrics.jsonl'


class JsonlWriter(metric_writers.MetricWriter):
  """Appends {"step": s, name: value, ...} lines to a file (scalars only)."""

  def __init__(self, path: str):
    self._file = open(path, 'a', buffering=1)  # line-buffered: readable while training

  def write_scalars(self, step, scalars):
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(row) + '\n')

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The rows of `<workdir>/metrics.jsonl` (a restarted run appends; later rows win)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def format_duration(seconds: float) -> str:
  """0:58, 12:05, 3:04:10."""
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


def progress_line(step: int, total_steps: int, scalars: Mapping[str, float]) -> str:
  """The console's line for a logged step: `step 120/300  loss 31.2  52 ex/s  ETA 0:58`
  (rate and ETA once two log points have been timed)."""
  parts = [f'step {step}/{total_steps}', f'loss {scalars["loss"]:.3g}']
  rate = scalars.get('perf/examples_per_sec')
  if rate is not None:
    parts.append(f'{rate:,.0f} ex/s' if rate >= 10 else f'{rate:.1f} ex/s')
    parts.append(f'ETA {format_duration(scalars["perf/eta_hours"] * 3600)}')
  if scalars.get('perf/input_wait_frac', 0.0) >= 0.01:  # the input is stalling the steps
    parts.append(f'input wait {scalars["perf/input_wait_frac"]:.0%}')
  return '  '.join(parts)


class MetricLogger:
  """Writes metrics every `every_steps` steps with throughput, MFU and ETA; the console
  gets `progress_line` (`verbose`: every scalar, clu's LoggingWriter)."""

  def __init__(self, workdir: str, *, total_steps: int, batch_size: int,
               flops_per_step: float | None, peak_flops_per_device: float,
               verbose: bool = False):
    self.total_steps, self.batch_size = total_steps, batch_size
    self.flops_per_step, self.peak = flops_per_step, peak_flops_per_device
    self.verbose = verbose
    writers = [metric_writers.LoggingWriter()] if verbose else []
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      writers += [metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard')),
                  JsonlWriter(os.path.join(workdir, METRICS_FILE))]
    self.writer = metric_writers.MultiWriter(writers)
    self._last_step: int | None = None
    self._last_time = 0.0
    self._wait_s, self._wait_steps = 0.0, 0

  def start(self, step: int) -> None:
    """Marks the start of timing (after compilation, so it does not count)."""
    self._last_step, self._last_time = step, time.perf_counter()

  def input_wait(self, seconds: float) -> None:
    """Adds one step's time blocked on its batch (logged as perf/input_wait_*)."""
    self._wait_s += seconds
    self._wait_steps += 1

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Writes `metrics` (host scalars) at `step` plus the perf/ scalars."""
    scalars = {k: float(v) for k, v in metrics.items()}
    now = time.perf_counter()
    if self._last_step is not None and step > self._last_step:
      steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
      scalars['perf/steps_per_sec'] = steps_per_sec
      scalars['perf/examples_per_sec'] = steps_per_sec * self.batch_size
      scalars['perf/eta_hours'] = (self.total_steps - step) / steps_per_sec / 3600
      if self.flops_per_step and self.peak:
        scalars['perf/mfu'] = self.flops_per_step * steps_per_sec / self.peak
      if self._wait_steps:
        scalars['perf/input_wait_frac'] = self._wait_s / max(now - self._last_time, 1e-9)
    if self._wait_steps:
      scalars['perf/input_wait_ms'] = 1e3 * self._wait_s / self._wait_steps
    self._wait_s, self._wait_steps = 0.0, 0
    self._last_step, self._last_time = step, now
    self.writer.write_scalars(step, scalars)
    if not self.verbose and 'loss' in scalars:
      logging.info('%s', progress_line(step, self.total_steps, scalars))
    return scalars

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


class Profiler:
  """Captures a jax.profiler trace of steps [start, start + num_steps) to <workdir>/profile."""

  def __init__(self, workdir: str, start: int, num_steps: int):
    self.dir = os.path.join(workdir, 'profile')
    self.start, self.stop = start, start + num_steps
    self.active = False

  def step(self, step: int) -> None:
    if self.stop <= self.start or jax.process_index() != 0:
      return
    if step == self.start and not self.active:
      jax.profiler.start_trace(self.dir)
      self.active = True
    elif step == self.stop and self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.info('profile of steps %d-%d written to %s', self.start, self.stop - 1, self.dir)

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
