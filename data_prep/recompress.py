r"""Rewrites a TFDS ArrayRecord build's shards with other ArrayRecord writer options.

    python -m data_prep.recompress --dir DATA_DIR/m5product/features/1.0.0 \
        [--options group_size:1,uncompressed] [--workers 4] [-v]

TFDS writes ArrayRecord with zstd level 3. Reading a features example back then costs
0.41-0.50 CPU-ms of which zstd is a quarter; uncompressed, the input pipeline runs at
0.75-0.79 instead of 0.94-1.05 CPU-ms per example (read workers on; the 6000-item demo,
benchmarks/results/input_pipeline.md) and the files take 2.06x the bytes. Worth it where
the host's CPU is the limit and its storage is not (local NVMe); keep zstd where reads
come over the network.

Every shard is read and written in chunks (bounded memory at any shard size), under a
temporary name; the new file's record count and a digest of all its records (blake2b,
each record with its length) are checked against the records written, and only then
does it replace the old file, which is decoded once. An interrupted run leaves every
shard either old or new, and a rerun skips shards already in the requested options. A
shard that cannot be read is a one-line error naming it, and the shards done so far stay
done. The records' bytes are unchanged, so dataset_info.json still holds.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import hashlib
import multiprocessing
import os
import sys
import time

CHUNK = 256  # records held in memory at once: ~75 MB of features examples

# ArrayRecord spells out every option when it reports a file's options; these are the
# ones that decide the bytes on disk.
_DEFAULTS = {'group_size': '65536', 'transpose': 'false', 'pad_to_block_boundary': 'false'}
_CODECS = ('uncompressed', 'zstd', 'brotli', 'snappy')
_DEFAULT_LEVEL = {'zstd': 'zstd:3', 'brotli': 'brotli:6'}


def _canonical(options: str) -> dict:
  """'group_size:1,zstd:3' -> {'group_size': '1', ..., 'codec': 'zstd:3'}; window_log and
  max_parallelism are left out (they do not change the records' bytes)."""
  out, codec = dict(_DEFAULTS), 'brotli:6'  # ArrayRecord's default codec
  for part in filter(None, (p.strip() for p in options.split(','))):
    key, _, value = part.partition(':')
    if key in _CODECS:
      codec = part if value or key not in _DEFAULT_LEVEL else _DEFAULT_LEVEL[key]
    elif key in _DEFAULTS:
      out[key] = value
  out['codec'] = codec
  return out


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def shards(directory: str) -> list[str]:
  """The build's ArrayRecord shards; a one-line error when there are none."""
  if not os.path.isfile(os.path.join(directory, 'dataset_info.json')):
    raise SystemExit(f'error: {directory} is not a TFDS dataset version folder '
                     '(no dataset_info.json)')
  paths = sorted(p for p in glob.glob(os.path.join(directory, '*.array_record-*-of-*'))
                 if not p.endswith('.recompress-tmp'))
  if not paths:
    raise SystemExit(f'error: no ArrayRecord shards in {directory} (a TFRecord build? run '
                     '`tfds convert_format --out_file_format array_record` first)')
  return paths


def _chunks(n: int):
  """Index lists of CHUNK records covering 0..n-1."""
  return (list(range(s, min(n, s + CHUNK))) for s in range(0, n, CHUNK))


def _digest(records, digest):
  for record in records:
    digest.update(len(record).to_bytes(8, 'little'))
    digest.update(record)
  return records


def recompress_shard(path: str, options: str) -> tuple[int, int, int]:
  """Rewrites one shard with `options`: (records, bytes before, bytes after); records 0
  and equal sizes when it already had them. The new file must read back the same
  records (count, and a blake2b digest of every record with its length) before it
  replaces the old one, which is decoded once."""
  from array_record.python import array_record_module as ar  # pylint: disable=g-import-not-at-top
  reader = ar.ArrayRecordReader(path, 'readahead_buffer_size:0')
  size = os.path.getsize(path)
  written = hashlib.blake2b()
  try:
    if _canonical(reader.writer_options_string()) == _canonical(options):
      return 0, size, size
    n = reader.num_records()
    tmp = path + '.recompress-tmp'
    writer = ar.ArrayRecordWriter(tmp, options)
    try:
      for indices in _chunks(n):
        for record in _digest(reader.read(indices), written):
          writer.write(record)
    except Exception as e:  # pylint: disable=broad-except
      writer.close()
      os.remove(tmp)
      raise RuntimeError(f'{_first_line(e)}; the shard is left as it was') from e
    writer.close()
  finally:
    reader.close()
  check = ar.ArrayRecordReader(tmp, 'readahead_buffer_size:0')
  read_back = hashlib.blake2b()
  try:
    same = check.num_records() == n
    for indices in _chunks(n) if same else ():
      _digest(check.read(indices), read_back)
  finally:
    check.close()
  if not same or read_back.digest() != written.digest():
    os.remove(tmp)
    raise RuntimeError('the rewritten shard does not read back the same records; '
                       'the shard is left as it was')
  with open(tmp, 'rb') as f:
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return n, size, os.path.getsize(path)


def recompress(directory: str, options: str, workers: int = 1, verbose: bool = False) -> dict:
  """Rewrites every shard of `directory`; returns the totals. Progress on stderr."""
  if 'group_size:1' not in options.replace(' ', '').split(','):
    raise SystemExit(f'error: --options {options!r} must keep group_size:1: the input pipeline '
                     'reads records at random, and a larger group decodes the whole group per read')
  paths = shards(directory)
  for stale in glob.glob(os.path.join(directory, '*.recompress-tmp')):
    os.remove(stale)  # a run that was killed mid-shard
  totals = {'shards': len(paths), 'rewritten': 0, 'skipped': 0, 'records': 0,
            'bytes_before': 0, 'bytes_after': 0}
  start, rewritten_bytes = time.perf_counter(), 0
  # spawn: the caller may hold threads (TF, JAX) that a forked child would inherit locked.
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(max(1, workers), mp_context=context) as pool:
    futures = {pool.submit(recompress_shard, p, options): p for p in paths}
    for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
      try:
        records, before, after = future.result()
      except Exception as e:  # pylint: disable=broad-except
        for f in futures:
          f.cancel()
        raise SystemExit(f'error: {futures[future]}: {_first_line(e)} ({done - 1} of '
                         f'{len(paths)} shards done)') from None
      totals['rewritten' if records else 'skipped'] += 1
      totals['records'] += records
      totals['bytes_before'] += before
      totals['bytes_after'] += after
      rewritten_bytes += before if records else 0
      elapsed = time.perf_counter() - start
      eta = elapsed / done * (len(paths) - done)
      line = (f'\r{done}/{len(paths)} shards, {totals["records"] / elapsed:.0f} records/s, '
              f'{rewritten_bytes / elapsed / 1e6:.0f} MB/s rewritten, ETA {eta:.0f} s')
      if verbose:
        line = f'{futures[future]}: {records} records, {before} -> {after} bytes\n' + line
      print(line, end='', file=sys.stderr, flush=True)
  print(file=sys.stderr)
  return totals


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--dir', required=True, help='the TFDS dataset version folder')
  parser.add_argument('--options', default='group_size:1,uncompressed',
                      help='ArrayRecord writer options (TFDS writes group_size:1 = zstd:3)')
  parser.add_argument('--workers', type=int, default=1, help='shards rewritten at once')
  parser.add_argument('-v', '--verbose', action='store_true', help='a line per shard')
  args = parser.parse_args(argv)
  t = recompress(args.dir, args.options, args.workers, args.verbose)
  ratio = t['bytes_after'] / t['bytes_before'] if t['bytes_before'] else 1.0
  print(f"{t['rewritten']} of {t['shards']} shards rewritten with {args.options} "
        f"({t['records']} records; {t['skipped']} already were), "
        f"{t['bytes_before'] / 1e9:.2f} -> {t['bytes_after'] / 1e9:.2f} GB ({ratio:.2f}x)")
  return 0


if __name__ == '__main__':
  sys.exit(main())
