"""Session fixtures made once per test run, also when pytest-xdist runs the suite in
several worker processes (`make test` runs `-n 2`): each worker has its own session,
so a plain session fixture would be built once per worker."""
from __future__ import annotations

import os
import pathlib
import shutil
from typing import Callable

import filelock


def made_once(tmp_path_factory, name: str, make: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """The directory `name`, filled by `make(path)` once for the whole run.

  Without xdist: a fresh temp directory. Under xdist: one directory beside the
  workers' own temp roots; the first worker to take its lock makes it, the others
  wait and reuse it. A `make` that raised leaves no done-marker, so the next worker
  tries again (and fails the same way, in its own tests)."""
  if 'PYTEST_XDIST_WORKER' not in os.environ:
    path = tmp_path_factory.mktemp(name)
    make(path)
    return path
  path = tmp_path_factory.getbasetemp().parent / name
  done = path.parent / f'{name}.done'
  with filelock.FileLock(f'{path}.lock'):
    if not done.exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      make(path)
      done.touch()
  return path
