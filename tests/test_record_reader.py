"""m5_jax/record_reader.py: records read in worker processes, on a plain ArrayRecord file."""
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from array_record.python import array_record_data_source
from array_record.python import array_record_module

from m5_jax import record_reader

# An empty record and records ending in NUL bytes: nothing may trim or merge them.
RECORDS = [b'', b'\x00', b'abc\x00\x00'] + [bytes([i]) * (1000 * i) for i in range(1, 8)]


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('records') / 'r.array_record')
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  for record in RECORDS:
    writer.write(record)
  writer.close()
  return array_record_data_source.ArrayRecordDataSource([path])


def _records(paths: np.ndarray) -> list[bytes]:
  records = []
  for path in paths:
    with open(path, 'rb') as f:
      records.append(f.read())
  return records


def test_reads_the_records_of_the_source(source, tmp_path):
  reader = record_reader.ProcessRecordReader(source, 2, spool_dir=str(tmp_path))
  assert len(reader) == len(RECORDS)
  indices = np.array([3, 0, 9, 3, 1, 2])
  paths = reader.read(indices)
  assert len(set(paths)) == len(indices)  # a file per record, repeats included
  assert _records(paths) == [RECORDS[i] for i in indices]
  reader.close()
  assert not os.listdir(tmp_path)  # the spool folder is gone with the reader


def test_released_files_are_rewritten_in_place_by_later_reads(source, tmp_path):
  """Slots: a read rewrites released files (a longer record over a shorter one and back,
  so the file is cut to size), never one still lent out."""
  reader = record_reader.ProcessRecordReader(source, 1, spool_dir=str(tmp_path))
  first = reader.read(np.array([9, 2]))         # 7000 bytes, then 5
  held = reader.read(np.array([4]))
  assert reader.slots_in_use == 3
  reader.release(first)
  second = reader.read(np.array([3, 8, 0]))     # reuses both freed files, adds one
  assert set(first) < set(second) and held[0] not in second
  assert _records(second) == [RECORDS[3], RECORDS[8], RECORDS[0]]
  assert _records(held) == [RECORDS[4]]
  reader.release(second)
  third = reader.read(np.array([1, 9, 2]))
  assert _records(third) == [RECORDS[1], RECORDS[9], RECORDS[2]]
  # A restore: every slot is free and the old files are gone; old paths are ignored.
  reader.release_all()
  assert reader.slots_in_use == 0 and not os.listdir(reader._spool)
  reader.release(held)
  assert reader.slots_in_use == 0
  assert _records(reader.read(np.array([5]))) == [RECORDS[5]]
  reader.close()


def test_a_failed_read_is_a_one_line_error_and_the_worker_reads_on(source, tmp_path):
  reader = record_reader.ProcessRecordReader(source, 1, spool_dir=str(tmp_path))
  with pytest.raises(record_reader.RecordReaderError,
                     match=r'^record reader worker 0 \(pid \d+\): reading records \[99\]'):
    reader.read(np.array([99]))
  assert reader.slots_in_use == 0  # the failed read's files were handed back
  assert _records(reader.read(np.array([4]))) == [RECORDS[4]]
  reader.close()


def test_workers_clear_the_spool_when_the_main_process_is_killed(source, tmp_path):
  """The spool is in RAM (/dev/shm): a killed trainer must not leave batches there."""
  script = textwrap.dedent(f"""
      import os, pickle, sys
      import numpy as np
      from m5_jax import record_reader
      source = pickle.loads({__import__('pickle').dumps(source)!r})
      reader = record_reader.ProcessRecordReader(source, 2, spool_dir={str(tmp_path)!r})
      reader.read(np.array([5, 6]))   # its files stay until released
      print(reader._spool, flush=True)
      os.kill(os.getpid(), 9)
  """)
  run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert run.returncode == -9, run.stderr
  spool = run.stdout.strip()
  assert spool.startswith(str(tmp_path))
  for _ in range(100):  # the workers see EOF on their stdin, then clear it
    if not os.path.exists(spool):
      break
    time.sleep(0.1)
  assert not os.path.exists(spool)


def test_at_least_one_worker():
  with pytest.raises(ValueError, match='num_workers must be at least 1'):
    record_reader.ProcessRecordReader([], 0)
