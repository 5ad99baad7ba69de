"""The common driver of the eval binaries: which checkpoints, a done-list, --watch.

    python -m m5_jax.evaluate.<task> --workdir DIR [--config FILE[:ARG]]
        [--step N | --all | --watch] [--subsets T,I,IT,T:I,all] [--force]
        [--batch_size B] [--feature pooled|encoder_pooled] [--normalize center|modality|none]
        [--fusion sum|concat|sum_dot]
        [--config.x=y ...]

Modes (the t5x eval convention):
  default   the latest complete checkpoint;
  --step N  that step;
  --all     every complete checkpoint, oldest first;
  --watch   like --all, then waits for new checkpoints while training runs; stops
            after the run's final step (config.total_steps) or --watch_timeout_s
            without a new one.
Only complete checkpoints are ever read (`checkpointing.list_steps` lists
finalized steps only); a step deleted by the keep policy between listing and
reading, or one whose files are damaged (a kill -9 during the keep policy's
delete), is skipped with a warning and counted (the default mode then takes the
newest readable step; an explicit --step is an error).

Outputs go to `<workdir>/eval/<task>/`, or to `<workdir>/eval/<task>/<variant>/`
when a choice that changes the numbers is not the default (e.g.
`feature=encoder_pooled`; see `variant_of`). At the end a binary prints its
results table (numbers with 95% intervals, the small-eval-set flag) and the
paths it wrote.

Done-list: `<output dir>/done.json` records each finished step with the
signature of what was evaluated (subsets, feature, normalisation), written
atomically after the step's results. A restarted evaluator skips what is done;
--force re-evaluates.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections

from m5_jax import checkpointing
from m5_jax import config_lib

EVAL_DIR = 'eval'
SCORING_VERSION = 2  # 2: fusion 'sum' is L2-normalised (features.SplitFeatures.combine)


@dataclasses.dataclass
class Options:
  """Flags shared by every eval binary (defaults are the CLI defaults)."""
  workdir: str = ''
  config: str = ''            # a config file to use instead of <workdir>/config.json
  step: int = -1              # -1: latest (or all / watch)
  all: bool = False
  watch: bool = False
  force: bool = False
  subsets: str = ''           # comma list; '' = the task's default
  batch_size: int = 0         # 0: config.input.batch_size
  feature: str = 'pooled'     # model output used as the feature: pooled | encoder_pooled
  normalize: str = 'center'   # center | modality | none (features.SplitFeatures.combine)
  fusion: str = 'sum'         # sum (the paper's, unit norm) | concat | sum_dot (features.combine)
  poll_s: float = 30.0
  watch_timeout_s: float = 3600.0
  seed: int = 0

  variant: str = ''           # set by main(): the non-default choices (see `variant_of`)

  def signature(self, task: str) -> str:
    # SCORING_VERSION: a result scored before the fused sum was L2-normalised
    # (2026-12-06) is not taken as done.
    return (f'{task}|{self.subsets}|{self.feature}|{self.normalize}|{self.variant}'
            f'|scoring{SCORING_VERSION}')  # variant has --fusion


def variant_of(options: Options, extra: dict[str, Any] | None = None,
               extra_defaults: dict[str, Any] | None = None) -> str:
  """'name=value,...' of the choices that change a task's numbers, where not default.

  Results of different variants go to different folders (`output_dir`), so that
  evaluating the same step with, say, another --feature never overwrites the
  default results. --subsets is not part of it: rows of other subsets are merged
  into the same step's results.
  """
  defaults = Options()
  chosen = {'feature': (options.feature, defaults.feature),
            'normalize': (options.normalize, defaults.normalize),
            'fusion': (options.fusion, defaults.fusion)}
  for name, value in (extra or {}).items():
    if name != 'finetuned':  # a mode of the workdir, not a variant
      chosen[name] = (value, (extra_defaults or {}).get(name))
  return ','.join(f'{name}={value}' for name, (value, default) in chosen.items()
                  if value != default)


def output_dir(workdir: str, task: str, variant: str = '') -> str:
  """<workdir>/eval/<task>, or <workdir>/eval/<task>/<variant> for a non-default variant."""
  directory = os.path.join(workdir, EVAL_DIR, task)
  return os.path.join(directory, variant) if variant else directory


# ----------------------------------------------------------------------------- done-list


class DoneList:
  """{step: [signatures]} in <workdir>/eval/<task>/done.json, rewritten atomically."""

  def __init__(self, directory: str):
    self.path = os.path.join(directory, 'done.json')
    self.entries: dict[str, list[str]] = {}
    if os.path.isfile(self.path):
      with open(self.path) as f:
        self.entries = json.load(f)

  def contains(self, step: int, signature: str) -> bool:
    return signature in self.entries.get(str(step), [])

  def add(self, step: int, signature: str) -> None:
    self.entries.setdefault(str(step), [])
    if signature not in self.entries[str(step)]:
      self.entries[str(step)].append(signature)
    if jax.process_index() != 0:
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(self.entries, f, indent=1, sort_keys=True)
    os.replace(tmp, self.path)


# ----------------------------------------------------------------------------- steps


def run(task: str, options: Options, list_steps: Callable[[], list[int]],
        evaluate_step: Callable[[int], Any], *, final_step: int | None = None,
        sleep: Callable[[float], None] = time.sleep) -> list[int]:
  """Evaluates the steps the options select, skipping done ones; returns those evaluated.

  `evaluate_step(step)` does the work (and writes results); it may raise
  FileNotFoundError when the checkpoint vanished, which skips the step.
  """
  done = DoneList(output_dir(options.workdir, task, options.variant))
  signature = options.signature(task)
  evaluated: list[int] = []
  unreadable: list[int] = []

  def process(step: int) -> bool:
    if done.contains(step, signature) and not options.force:
      logging.info('%s: step %d already evaluated (done-list); skipping', task, step)
      return True
    logging.info('%s: evaluating step %d', task, step)
    start = time.time()
    try:
      evaluate_step(step)
    except FileNotFoundError as e:
      logging.warning('%s: step %d is gone (%s); skipping', task, step, e)
      return False
    except checkpointing.UnreadableCheckpointError as e:
      # Damaged or half-deleted (kill -9 during the keep policy's delete): skipped, counted.
      logging.warning('%s: %s; skipping step %d', task, e, step)
      unreadable.append(step)
      return False
    done.add(step, signature)
    evaluated.append(step)
    logging.info('%s: step %d done in %.1f s', task, step, time.time() - start)
    return True

  steps = list_steps()
  if options.step >= 0:
    if options.step not in steps:
      raise FileNotFoundError(f'no complete checkpoint at step {options.step} in '
                              f'{options.workdir} (have {steps})')
    process(options.step)
  elif not (options.all or options.watch):
    if not steps:
      raise FileNotFoundError(f'no complete checkpoint in {options.workdir}')
    for step in reversed(steps):  # the latest readable one
      if process(step):
        break
  else:
    seen: set[int] = set()
    last_new = time.time()
    while True:
      new = [s for s in steps if s not in seen]
      for step in new:
        process(step)
        seen.add(step)
      if new:
        last_new = time.time()
      if not options.watch:
        break
      if final_step is not None and final_step in seen:
        logging.info('%s: final step %d evaluated; stopping', task, final_step)
        break
      if time.time() - last_new > options.watch_timeout_s:
        logging.info('%s: no new checkpoint for %.0f s; stopping', task, options.watch_timeout_s)
        break
      sleep(options.poll_s)
      steps = list_steps()
  if unreadable:
    logging.warning('%s: skipped %d unreadable checkpoint step(s): %s', task, len(unreadable),
                    ', '.join(map(str, unreadable)))
  if options.step >= 0 and unreadable:
    raise FileNotFoundError(f'checkpoint step {options.step} in {options.workdir} is unreadable')
  return evaluated


# ----------------------------------------------------------------------------- CLI


def parse_flags(argv: Sequence[str], extra: dict[str, Any] | None = None
                ) -> tuple[Options, dict[str, Any], list[tuple[str, str]]]:
  """The eval binaries' flags (config_lib.parse_flags) -> (Options, extra flags, overrides).

  `--config.x=y` overrides are returned for `load_config`; unknown flags raise a
  ConfigError naming the nearest valid one.
  """
  defaults = dataclasses.asdict(Options())
  extra = dict(extra or {})
  values, overrides = config_lib.parse_flags(argv, {**defaults, **extra}, __doc__)
  options = Options(**{k: v for k, v in values.items() if k in defaults})
  config_lib.validate_flags(dataclasses.asdict(options))  # --feature, --normalize, ...
  if not options.workdir:
    raise config_lib.ConfigError('--workdir DIR is required')
  if sum([options.step >= 0, options.all, options.watch]) > 1:
    raise config_lib.ConfigError('give at most one of --step, --all, --watch')
  return options, {k: values[k] for k in extra}, overrides


def load_config(options: Options, overrides: Sequence[tuple[str, str]]
                ) -> ml_collections.ConfigDict:
  """The run's resolved config (or --config), with --config.x=y overrides applied."""
  if options.config:
    config = config_lib.load_config(options.config)
  else:
    config = config_lib.load_workdir_config(options.workdir)
  return config_lib.validate(config_lib.apply_overrides(config, overrides))


def main(task: str, argv: Sequence[str], body: Callable[..., Sequence[int]],
         extra_flags: dict[str, Any] | None = None) -> None:
  """Parses flags (clean one-line errors), calls body(options, config, extra) -> the
  steps evaluated, then prints the results table and the paths written."""
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  try:
    options, extra, overrides = parse_flags(argv, extra_flags)
    options.variant = variant_of(options, extra, extra_flags)
    config = load_config(options, overrides)
  except config_lib.ConfigError as e:
    config_lib.exit_with(e, f'm5_jax.evaluate.{task}')
    return
  try:
    steps = body(options, config, extra)
  except (FileNotFoundError, config_lib.ConfigError) as e:
    print(f'm5_jax.evaluate.{task}: error: {e}', file=sys.stderr)
    sys.exit(1)
  if jax.process_index() == 0:
    from m5_jax.evaluate import results_io  # pylint: disable=g-import-not-at-top  (imports runner)
    print(results_io.summary(options.workdir, task, steps or [], options.variant), flush=True)
