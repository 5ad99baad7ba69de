"""Writing a generated release: what make_mini and make_realistic share.

Both generators draw a plan (data_prep/mini/plan.py), then render each item in
worker processes and write the annotations JSON in item order, the split lists,
the instance groups and a manifest. Only the per-item renderer differs:
`write_item(ctx, item) -> bytes` (one '"id": {...}' line) of the generator's item
module.
"""
from __future__ import annotations

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
