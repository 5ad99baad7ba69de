"""Export product embeddings of a split as Parquet: one row per item, resumable.

    python -m m5_jax.embed --workdir W --split S --out DIR [--step N]
        [--feature pooled|encoder_pooled] [--batch_size B] [--part_items 50000]

Writes DIR/part-NNNNN.parquet and DIR/_manifest.json (read the parts as one
table with `pyarrow.dataset.dataset(DIR)` or `pandas.read_parquet(DIR)`). Columns:

  index       int64   position of the item in the TFDS split (rows are in this order)
  item_id     string  the release's item id
  label       int64   category class (-1 unknown); label_name its text
  instance    int64   product instance (-1 unknown)
  title       string  the item's title text
  <modality>  list<float32> (D values), null where the item lacks the modality
  fused       list<float32> (D values), the sum of the item's present modalities,
              each centred on its split mean and L2-normalised first (the evaluators'
              default `normalize=center`, `SplitFeatures.combine`); null when none

The vectors come from the evaluators' embedding path (`model_features.Embedder`:
the checkpoint's parameters on a mesh over every device, the eval input pipeline,
the same jitted forward). The split is embedded in parts of `--part_items` items;
each part is written atomically, so a restart embeds only the missing parts. The
fused column needs the modality means of the whole split, so it is added once
every part exists (parts already fused with the same means are left alone). The
manifest records the run, step, feature, dataset build and the means (`search`
uses them to normalise a query exactly as the gallery).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time

import jax
import numpy as np

MANIFEST = '_manifest.json'  # '_': readers of DIR as a Parquet dataset skip it
FUSED = 'fused'
META_COLUMNS = ('index', 'item_id', 'label', 'label_name', 'instance', 'title')
NORMALIZE = 'center'  # the evaluators' default (features.SplitFeatures.combine)
PROG = 'm5_jax.embed'


class EmbedError(Exception):
  """Bad input: reported as one line."""


# ----------------------------------------------------------------------------- parquet


def part_name(part: int) -> str:
  return f'part-{part:05d}.parquet'


def vector_column(vectors: np.ndarray, present: np.ndarray):
  """f32[N, D] + bool[N] -> a list<float32> column of D-vectors, null where absent.

  (A fixed_size_list column would say D in the schema, but pyarrow cannot read
  back a Parquet fixed_size_list column holding nulls.)"""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  vectors = np.ascontiguousarray(vectors, np.float32)
  offsets = pa.array(np.arange(len(vectors) + 1, dtype=np.int32) * vectors.shape[1])
  return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)),
                                  mask=pa.array(~np.asarray(present, bool)))


def column_vectors(column, dim: int) -> tuple[np.ndarray, np.ndarray]:
  """A vector column -> (f32[N, D] with zeros where null, bool[N] present)."""
  array = column.combine_chunks() if hasattr(column, 'combine_chunks') else column
  present = array.is_valid().to_numpy(zero_copy_only=False)
  flat = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
  if flat.size != int(present.sum()) * dim:
    raise EmbedError(f'a vector column does not hold {dim}-vectors')
  vectors = np.zeros((len(array), dim), np.float32)
  vectors[present] = flat.reshape(-1, dim)
  return vectors, present


def write_table(table, path: str) -> None:
  """Atomic: a temp file renamed into place (a killed run leaves no half part)."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  tmp = os.path.join(os.path.dirname(path), f'_tmp{os.getpid()}-{os.path.basename(path)}')
  pq.write_table(table, tmp)
  os.replace(tmp, path)


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise EmbedError(f'no embeddings in {directory} ({MANIFEST} missing; write them with '
                     f'`python -m {PROG}`)')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def write_manifest(directory: str, manifest: dict) -> None:
  tmp = os.path.join(directory, f'_tmp{os.getpid()}-{MANIFEST}')
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(manifest, f, indent=1, ensure_ascii=False)
  os.replace(tmp, os.path.join(directory, MANIFEST))


def load_means(manifest: dict) -> dict[str, np.ndarray]:
  return {m: np.asarray(v, np.float32) for m, v in manifest['means'].items()}


def means_digest(means: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for m in sorted(means):
    digest.update(m.encode() + np.asarray(means[m], np.float32).tobytes())
  return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- records


def read_fields(config, split: str, start: int, stop: int) -> dict[str, list]:
  """item_id, label_name and title of items [start, stop) of `split` (records parsed,
  no media decoded)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from m5_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  source, _ = input_pipeline.load_data_source(config.input.dataset, split,
                                              config.input.data_dir or None)
  out = {'item_id': [], 'label_name': [], 'title': []}
  for record in source.__getitems__(list(range(start, stop))):
    feature = tf.train.Example.FromString(record).features.feature
    for name, values in out.items():
      field = feature[name].bytes_list.value if name in feature else []
      values.append(field[0].decode('utf-8') if len(field) == 1 else None)
  if any(v is None for v in out['item_id']):
    raise EmbedError(f'{split}: a record without an item_id')
  return out


# ----------------------------------------------------------------------------- export


def plan(embedder, split: str, num_items: int, part_items: int, identity: dict) -> dict:
  """The manifest of a new export: parts of whole eval steps."""
  steps_per_part = max(1, -(-part_items // embedder.batch_size))
  items_per_part = steps_per_part * embedder.batch_size
  config = embedder.config
  return {
      'workdir': os.path.abspath(embedder.workdir), 'step': embedder.step, 'split': split,
      'feature': embedder.feature, 'dataset': identity, 'num_items': num_items,
      'modalities': list(config.modalities), 'batch_size': embedder.batch_size,
      'steps_per_part': steps_per_part, 'num_parts': max(1, -(-num_items // items_per_part)),
      'tokenizer': config.input.get('tokenizer', None), 'normalize': NORMALIZE,
      'complete': False,
  }


def check_resume(old: dict, new: dict, out: str) -> None:
  """A restart must continue the same export; anything else is one line."""
  for key in ('workdir', 'step', 'split', 'feature', 'dataset', 'num_items', 'modalities',
              'batch_size', 'steps_per_part'):
    if old.get(key) != new[key]:
      raise EmbedError(f'{out} holds an export with {key}={old.get(key)!r}, not {new[key]!r}: '
                       'give another --out (or delete it)')


def embed_part(embedder, batches, manifest: dict, part: int, path: str) -> int:
  """Embeds one part and writes it (without the fused column); returns its items."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  steps = manifest['steps_per_part']
  features = embedder.embed_steps(batches, part * steps, steps, manifest['split'])
  manifest.setdefault('dim', int(features.pooled[manifest['modalities'][0]].shape[1]))
  if jax.process_index() != 0:  # every process embeds (the forward is collective), one writes
    return features.num_items
  start = part * steps * manifest['batch_size']
  fields = read_fields(embedder.config, manifest['split'], start, start + features.num_items)
  columns = {
      'index': pa.array(np.arange(start, start + features.num_items, dtype=np.int64)),
      'item_id': pa.array(fields['item_id'], pa.string()),
      'label': pa.array(features.label, pa.int64()),
      'label_name': pa.array(fields['label_name'], pa.string()),
      'instance': pa.array(features.instance, pa.int64()),
      'title': pa.array(fields['title'], pa.string()),
  }
  for m in manifest['modalities']:
    columns[m] = vector_column(features.pooled[m], features.present[m])
  write_table(pa.table(columns), path)
  return features.num_items


def read_part_features(path: str, modalities, dim: int):
  """(table, SplitFeatures) of one part file."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  from m5_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
  table = pq.read_table(path)
  pooled, present = {}, {}
  for m in modalities:
    pooled[m], present[m] = column_vectors(table.column(m), dim)
  features = features_lib.SplitFeatures(
      pooled=pooled, present=present, label=table.column('label').to_numpy(),
      instance=table.column('instance').to_numpy())
  return table, features


def split_means(out: str, manifest: dict) -> dict[str, np.ndarray]:
  """Each modality's mean vector over the split's items that have it (as
  `SplitFeatures.modality_means` on the whole split), streamed part by part."""
  dim, modalities = manifest['dim'], manifest['modalities']
  totals = {m: np.zeros((dim,), np.float64) for m in modalities}
  counts = {m: 0 for m in modalities}
  for part in range(manifest['num_parts']):
    _, features = read_part_features(os.path.join(out, part_name(part)), modalities, dim)
    for m in modalities:
      totals[m] += np.asarray(features.pooled[m][features.present[m]], np.float64).sum(0)
      counts[m] += int(features.present[m].sum())
  return {m: (totals[m] / max(counts[m], 1)).astype(np.float32) for m in modalities}


def add_fused(out: str, manifest: dict) -> int:
  """Writes the fused column into every part that lacks it for the current means."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  means = load_means(manifest)
  digest = means_digest(means).encode()
  rewritten = 0
  for part in range(manifest['num_parts']):
    path = os.path.join(out, part_name(part))
    table, features = read_part_features(path, manifest['modalities'], manifest['dim'])
    metadata = table.schema.metadata or {}
    if metadata.get(b'fused_means') == digest and FUSED in table.column_names:
      continue
    combined = features.combine(manifest['modalities'], NORMALIZE, means=means)
    if FUSED in table.column_names:
      table = table.drop_columns([FUSED])
    table = table.append_column(FUSED, vector_column(combined.features, combined.has_any))
    write_table(table.replace_schema_metadata({**metadata, b'fused_means': digest}), path)
    rewritten += 1
  return rewritten


def export(workdir: str, split: str, out: str, *, step: int | None = None,
           feature: str = 'pooled', batch_size: int | None = None,
           part_items: int = 50000, config=None) -> dict:
  """Embeds `split` of the run in `workdir` into `out` (resuming); returns the manifest."""
  from m5_jax import config_lib  # pylint: disable=g-import-not-at-top
  from m5_jax.evaluate import model_features  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(workdir):
    raise EmbedError(f'no run at --workdir {workdir}')
  if os.path.exists(out) and not os.path.isdir(out):
    raise EmbedError(f'--out {out} is a file, not a folder')
  config = config or config_lib.validate(config_lib.load_workdir_config(workdir))
  old = read_manifest(out) if os.path.isfile(os.path.join(out, MANIFEST)) else None
  if step is None and old is not None:
    step = old['step']  # a restart continues the step it started with
  embedder = model_features.Embedder(workdir, config, batch_size=batch_size, feature=feature)
  embedder.restore(step)
  batches = embedder.iterator(split, exact_ids=True)
  num_items = batches.host.num_examples
  manifest = plan(embedder, split, num_items, part_items,
                  model_features.dataset_identity(config))
  if old is not None:
    check_resume(old, manifest, out)
    manifest = {**old, 'complete': False}
  if jax.process_index() == 0:
    os.makedirs(out, exist_ok=True)
    write_manifest(out, manifest)

  todo = [p for p in range(manifest['num_parts'])
          if not os.path.isfile(os.path.join(out, part_name(p)))]
  print(f'embed {split}: {num_items} items of step {embedder.step} in {manifest["num_parts"]} '
        f'parts, {len(todo)} to do -> {out}', flush=True)
  items_per_part = manifest['steps_per_part'] * manifest['batch_size']
  total = sum(min(items_per_part, num_items - p * items_per_part) for p in todo)
  start = last = time.time()
  done = 0
  for i, part in enumerate(todo):
    done += embed_part(embedder, batches, manifest, part, os.path.join(out, part_name(part)))
    if jax.process_index() == 0:
      write_manifest(out, manifest)
    now = time.time()
    if now - last > 10 or i == len(todo) - 1:
      last = now
      rate = done / max(now - start, 1e-9)
      print(f'  {done}/{total} items, {rate:.1f} items/s, ETA {(total - done) / rate:.0f} s',
            flush=True)
  batches.host.close()
  if jax.process_index() != 0:
    return manifest  # the means and the fused column: process 0 alone, from the files

  if todo or 'means' not in manifest:
    means = split_means(out, manifest)
    manifest['means'] = {m: v.tolist() for m, v in means.items()}
  rewritten = add_fused(out, manifest)
  manifest['complete'] = True
  write_manifest(out, manifest)
  print(f'embed {split}: done ({len(todo)} parts embedded, {rewritten} fused) in '
        f'{time.time() - start:.1f} s', flush=True)
  return manifest


def read_embeddings(directory: str):
  """(manifest, pyarrow table of every part, in split order) of a finished export."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(directory)
  if not manifest.get('complete'):
    raise EmbedError(f'the export in {directory} is unfinished: run `python -m {PROG}` '
                     'again with the same flags to complete it')
  paths = [os.path.join(directory, part_name(p)) for p in range(manifest['num_parts'])]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise EmbedError(f'{missing[0]} is missing ({len(missing)} parts): rerun `python -m '
                     f'{PROG}` with the same flags to embed them again')
  return manifest, pa.concat_tables([pq.read_table(p) for p in paths])


# ----------------------------------------------------------------------------- CLI


def parse_args(argv):
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='the training run')
  parser.add_argument('--split', required=True, help="a split of the run's dataset")
  parser.add_argument('--out', required=True, help='output folder (resumed if it exists)')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default latest)')
  parser.add_argument('--feature', default='pooled', choices=('pooled', 'encoder_pooled'))
  parser.add_argument('--batch_size', type=int, default=None)
  parser.add_argument('--part_items', type=int, default=50000, help='items per part file')
  return parser.parse_args(argv)


def one_line_errors():
  from m5_jax import config_lib  # pylint: disable=g-import-not-at-top
  return (EmbedError, config_lib.ConfigError, FileNotFoundError, ValueError)


def main(argv) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  try:
    export(args.workdir, args.split, args.out, step=args.step, feature=args.feature,
           batch_size=args.batch_size, part_items=args.part_items)
  except one_line_errors() as e:
    print(f'{PROG}: error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
