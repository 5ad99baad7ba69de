"""A split's serialized records, read in worker processes: the main process's GIL stays free.

ArrayRecord's Python reader (array_record 0.8.6) holds the GIL through the whole
read: ~0.45 CPU-ms per ~300 KB features example (copy, checksum, zstd), during
which no other thread of the process runs Python. One training process then tops
out near 2,000 examples/s whatever its cores (benchmarks/results/input_pipeline.md).
With `config.input.read_workers` = N > 0 the reads happen in N worker processes
(`python -m m5_jax.record_reader`: numpy and array_record only, no TF or JAX):

  * the main process sends a batch's example indices, and a free file ("slot") for
    each, to an idle worker (a few bytes on a pipe) and waits with the GIL released;
  * the worker writes each record over its slot's file in a RAM-backed folder
    (/dev/shm when it has room) and answers when all are written;
  * the tf.data graph reads each file with `tf.io.read_file` (C++, no GIL) in the
    per-example map, and frees the batch's slots once the batch is built
    (input_pipeline.py).

Why slots: one file per batch cut with `tf.strings.substr` costs a copy and a
~75 MB buffer whose pages the kernel faults in each batch; a new file per record
costs the kernel the allocation and freeing of its pages. Rewriting the same
files avoids both (benchmarks/results/input_pipeline.md has the A/B).

The records, and so the batches, are those of an in-process read (tests/
test_record_reader.py). A worker that dies or fails is a one-line
RecordReaderError naming it and its last stderr line, never a hang.
"""
from __future__ import annotations

import os
import pickle
import queue
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import weakref

import numpy as np

_HEADER = struct.Struct('<qq')   # request: (number of indices, bytes of slot paths); reply: (status, n)
_OK, _ERROR = 0, 1
_SUFFIX = '.record'
_SPOOL_MIN_FREE = 2 << 30        # /dev/shm is used only with this much room (Docker's is 64 MB)


class RecordReaderError(RuntimeError):
  """A record reader worker failed or died."""


def default_spool_dir() -> str:
  """/dev/shm (RAM) when it has room for a few batches of records, else the temp folder."""
  try:
    stat = os.statvfs('/dev/shm')
    if stat.f_bavail * stat.f_frsize >= _SPOOL_MIN_FREE:
      return '/dev/shm'
  except OSError:
    pass
  return tempfile.gettempdir()


def _read_exact(stream, n: int) -> bytes:
  data = bytearray()
  while len(data) < n:
    chunk = stream.read(n - len(data))
    if not chunk:
      raise EOFError
    data += chunk
  return bytes(data)


class _Worker:
  """One worker process and its pipes."""

  def __init__(self, payload: bytes, spool: str, index: int):
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (package_root, env.get('PYTHONPATH')) if p)
    self.stderr = tempfile.TemporaryFile(dir=spool, prefix=f'worker{index}_', suffix='.err')
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'm5_jax.record_reader', spool], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self.stderr, env=env, bufsize=0)
    self.name = f'record reader worker {index} (pid {self.process.pid})'
    self.size = self._call(_HEADER.pack(len(payload), 0) + payload)

  def _call(self, request: bytes) -> int:
    """Sends a request; the n of the worker's reply."""
    try:
      self.process.stdin.write(request)
      self.process.stdin.flush()
      status, n = _HEADER.unpack(_read_exact(self.process.stdout, _HEADER.size))
      if status == _ERROR:
        raise RecordReaderError(
            f'{self.name}: {_read_exact(self.process.stdout, n).decode(errors="replace")}')
      return n
    except (BrokenPipeError, EOFError):
      code = self.process.wait(timeout=10)
      self.stderr.seek(0)
      lines = self.stderr.read().decode(errors='replace').strip().splitlines()
      raise RecordReaderError(f'{self.name} exited with code {code}'
                              + (f': {lines[-1]}' if lines else '')) from None

  def read(self, indices: np.ndarray, paths: list[bytes]):
    joined = b'\n'.join(paths)
    self._call(_HEADER.pack(len(indices), len(joined)) + joined
               + np.ascontiguousarray(indices, np.int64).tobytes())

  def stop(self):
    try:
      self.process.stdin.close()
      self.process.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
      self.process.kill()
      self.process.wait()
    self.process.stdout.close()
    self.stderr.close()


def _stop(workers: list[_Worker], spool: str):
  for worker in workers:
    worker.stop()
  shutil.rmtree(spool, ignore_errors=True)


class ProcessRecordReader:
  """`read(indices) -> paths`: the records at `indices` of a picklable random-access
  source (array_record's ArrayRecordDataSource), each written to the file at its path
  by one of `num_workers` worker processes. The caller hands the paths back with
  `release` once it has read them; their files are then rewritten by later reads.
  Thread-safe: up to num_workers reads run at once, more wait for a worker."""

  def __init__(self, source, num_workers: int, spool_dir: str | None = None):
    if num_workers < 1:
      raise ValueError(f'num_workers must be at least 1, got {num_workers}')
    self._spool = tempfile.mkdtemp(prefix='m5_records_', dir=spool_dir or default_spool_dir())
    self._workers: list[_Worker] = []
    self._finalizer = weakref.finalize(self, _stop, self._workers, self._spool)
    payload = pickle.dumps(source)
    self._workers.extend(_Worker(payload, self._spool, i) for i in range(num_workers))
    self.size = self._workers[0].size
    self._idle: queue.Queue[_Worker] = queue.Queue()
    for worker in self._workers:
      self._idle.put(worker)
    # Record files are slots, rewritten in place: with a new file per record the kernel
    # allocates and frees its pages each time (deleting them alone measured 0.04 CPU-ms
    # per 300 KB example). There are as many slots as records ever in flight at once
    # (prefetch and parallel reads).
    self._lock = threading.Lock()
    self._generation, self._num_slots, self._free = 0, 0, []

  def __len__(self) -> int:
    return self.size

  def read(self, indices: np.ndarray) -> np.ndarray:
    paths = self._take(len(indices))
    worker = self._idle.get()
    try:
      worker.read(np.asarray(indices), paths)
    except BaseException:
      self.release(paths)
      raise
    finally:
      self._idle.put(worker)
    return np.array(paths, dtype=object)

  def release(self, paths):
    """The files at `paths` (from `read`) were read: later reads may rewrite them."""
    with self._lock:
      prefix = self._prefix()
      self._free.extend(p for p in paths if p.startswith(prefix))

  def release_all(self):
    """Frees every slot once the caller's tf.data iterator is closed (a restore):
    nothing will read the files of the batches it had in flight. The slots start
    afresh under new names, so a late `release` of an old path is ignored."""
    with self._lock:
      self._generation, self._num_slots, self._free = self._generation + 1, 0, []
      prefix = self._prefix()
    if not self._finalizer.alive:  # closed: the spool is gone
      return
    for name in os.listdir(self._spool):
      path = os.path.join(self._spool, name)
      if name.endswith(_SUFFIX) and not os.fsencode(path).startswith(prefix):
        try:
          os.remove(path)
        except FileNotFoundError:
          pass

  @property
  def slots_in_use(self) -> int:
    with self._lock:
      return self._num_slots - len(self._free)

  def _prefix(self) -> bytes:
    return os.fsencode(os.path.join(self._spool, f'{self._generation}_'))

  def _take(self, n: int) -> list[bytes]:
    with self._lock:
      split = len(self._free) - min(n, len(self._free))
      reused, self._free = self._free[split:], self._free[:split]
      prefix, first = self._prefix(), self._num_slots
      self._num_slots += n - len(reused)
    return reused + [b'%s%d%s' % (prefix, slot, _SUFFIX.encode())
                     for slot in range(first, first + n - len(reused))]

  def close(self):
    self._finalizer()


def _write_slot(path: bytes, data: bytes):
  """Rewrites the file in place: its pages stay allocated, only a change in size
  allocates or frees some."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
  try:
    view = memoryview(data)
    while view:
      view = view[os.pwrite(fd, view, len(data) - len(view)):]
    os.ftruncate(fd, len(data))
  finally:
    os.close(fd)


def _serve(requests, replies, spool: str):
  """The worker: load the source, then read batches until the main process closes stdin
  (or dies: then the spool folder's leftover records, in RAM, go with the workers)."""
  def reply(status: int, n: int, payload: bytes = b''):
    replies.write(_HEADER.pack(status, n) + payload)
    replies.flush()

  try:
    size, _ = _HEADER.unpack(_read_exact(requests, _HEADER.size))
    source = pickle.loads(_read_exact(requests, size))
    reply(_OK, len(source))
  except Exception as e:  # pylint: disable=broad-except
    message = f'cannot open the source: {type(e).__name__}: {e}'.encode()
    reply(_ERROR, len(message), message)
    return
  while True:
    try:
      header = _read_exact(requests, _HEADER.size)
    except EOFError:  # the main process is done, or gone
      shutil.rmtree(spool, ignore_errors=True)
      return
    n, paths_length = _HEADER.unpack(header)
    paths = _read_exact(requests, paths_length).split(b'\n')
    indices = np.frombuffer(_read_exact(requests, 8 * n), np.int64).tolist()
    try:
      for path, record in zip(paths, source.__getitems__(indices)):
        _write_slot(path, record)
    except Exception as e:  # pylint: disable=broad-except
      message = f'reading records {indices[:4]}...: {type(e).__name__}: {e}'.encode()
      reply(_ERROR, len(message), message)
      continue
    reply(_OK, n)


if __name__ == '__main__':
  # The replies go to the original stdout; anything else printing there (a library's
  # banner) goes to stderr instead, so it cannot corrupt a reply.
  replies_fd = os.dup(1)
  os.dup2(2, 1)
  _serve(os.fdopen(0, 'rb', buffering=0), os.fdopen(replies_fd, 'wb', buffering=0), sys.argv[1])
