"""Writing a generated release: what make_mini and make_realistic share.

Both generators draw a plan (data_prep/mini/plan.py), then render each item in
worker processes and write the annotations JSON in item order, the split lists,
the instance groups and a manifest. Only the per-item renderer differs:
`write_item(ctx, item) -> bytes` (one '"id": {...}' line) of the generator's item
module.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
from typing import Any, Callable, Sequence

from data_prep import release

_write_item: Callable[[Any, Any], bytes] | None = None
_ctx: Any = None


def _init_worker(write_item, ctx):
  global _write_item, _ctx
  _write_item, _ctx = write_item, ctx


def _work(item) -> bytes:
  return _write_item(_ctx, item)


class Progress:
  """items/s and ETA on stderr, at most once per `every` seconds."""

  def __init__(self, prog: str, total: int, every: float = 2.0, enabled: bool = True):
    self.prog, self.total, self.every, self.enabled = prog, total, every, enabled
    self.start = self.last = time.monotonic()

  def update(self, done: int):
    now = time.monotonic()
    if self.enabled and (now - self.last >= self.every or done == self.total):
      self.last = now
      rate = done / max(now - self.start, 1e-9)
      eta = (self.total - done) / rate if rate > 0 else float('inf')
      print(f'{self.prog}: {done}/{self.total} items, {rate:.1f} items/s, ETA {eta:.0f}s',
            file=sys.stderr, flush=True)

  @property
  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def summary(self, out: str, workers: int, detail: str) -> None:
    """The closing line: items written to `out`, time, rate and workers, then `detail`."""
    if self.enabled:
      print(f'{self.prog}: wrote {self.total} items to {out} in {self.elapsed:.1f}s '
            f'({self.total / max(self.elapsed, 1e-9):.1f} items/s, {workers} workers); '
            f'{detail}', file=sys.stderr)


def generator_parser(prog: str, doc: str, default_num_products: int, num_categories: int,
                     rate_fields: Sequence[dataclasses.Field]) -> argparse.ArgumentParser:
  """The flags both generators take (`prog` is make_mini or make_realistic), with one
  --<defect>_rate per field of `rate_fields`; the caller adds its own flags."""
  parser = argparse.ArgumentParser(prog=f'python -m data_prep.{prog}',
                                   description=doc.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='release folder to write (empty or new)')
  parser.add_argument('--num_products', type=int, default=default_num_products,
                      help='number of items (listings)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workers', type=int, default=None, help='processes (default: all cores)')
  parser.add_argument('--num_categories', type=int, default=num_categories)
  parser.add_argument('--overwrite', action='store_true', help='replace an existing release')
  parser.add_argument('--quiet', action='store_true', help='no progress output')
  for field in rate_fields:
    parser.add_argument(f'--{field.name}_rate', type=float, default=field.default,
                        dest=f'rate_{field.name}', help=f'default {field.default}')
  return parser


def parsed_rates(args: argparse.Namespace, rate_fields: Sequence[dataclasses.Field], defaults):
  """`defaults` (a DefectRates) with the --<defect>_rate flags of `rate_fields` applied."""
  return dataclasses.replace(defaults, **{f.name: getattr(args, f'rate_{f.name}')
                                          for f in rate_fields})


def prepare_out(out: str, owned: Sequence[str], dirs: Sequence[str], overwrite: bool) -> None:
  """Makes `out` ready: new or empty, or (with `overwrite`) holding only names in
  `owned`, which are removed; then creates `dirs`. Raises ValueError otherwise."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f'--out {out} exists and is not a folder')
  if os.path.isdir(out) and os.listdir(out):
    if not overwrite:
      raise ValueError(f'{out} is not empty (pass --overwrite to replace a release)')
    stray = sorted(set(os.listdir(out)) - set(owned))
    if stray:
      raise ValueError(f'refusing to overwrite {out}: it holds {stray[:5]}')
    for name in owned:
      path = os.path.join(out, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
  for d in dirs:
    os.makedirs(os.path.join(out, d), exist_ok=True)


def write_release(out: str, layout: release.ReleaseLayout, plan, write_item, ctx,
                  workers: int, chunk: int, meter: Progress) -> None:
  """Renders every item of `plan` (`workers` processes, `chunk` items per task) into the
  annotations JSON in item order (atomic rename), then the split lists and instances.

  Same bytes for any `workers`: imap keeps the order and each item draws from its own RNGs.
  """
  tmp = os.path.join(out, layout.annotations + '.tmp')
  with open(tmp, 'wb') as f:
    f.write(b'{\n')
    if workers == 1:
      _init_worker(write_item, ctx)
      lines = map(_work, plan.items)
      pool = None
    else:   # spawn: workers start clean (no copied parent state), on any platform
      pool = multiprocessing.get_context('spawn').Pool(workers, _init_worker, (write_item, ctx))
      lines = pool.imap(_work, plan.items, chunksize=chunk)
    try:
      for n, line in enumerate(lines, 1):
        f.write(line + (b',\n' if n < len(plan.items) else b'\n'))
        meter.update(n)
    finally:
      if pool is not None:
        pool.terminate()
    f.write(b'}\n')
  os.replace(tmp, os.path.join(out, layout.annotations))

  for split, ids in plan.splits.items():
    with open(layout.split_path(out, split), 'w', encoding='utf-8') as f:
      f.writelines(i + '\n' for i in ids)
  with open(os.path.join(out, layout.instances), 'w', encoding='utf-8') as f:
    f.writelines(f'{i}\t{inst}\n' for i, inst in plan.instances)


def write_manifest(path: str, manifest: dict) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(manifest, f, ensure_ascii=False, indent=1)
    f.write('\n')
