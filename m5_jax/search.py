"""Search exported product embeddings by a text or by a product.

    python -m m5_jax.search --embeddings DIR (--query-text "红色 连衣裙" | --query-id ID)
        [--modalities T,I] [--k 10] [--faiss-index OUT]

DIR is an export of `python -m m5_jax.embed`. The gallery vector of an item is the
evaluators' feature of the chosen modalities (default: all of the export): the sum
of its present ones, each centred on the split's mean and L2-normalised
(`SplitFeatures.combine`, the means recorded by the export); items with none of
them are left out. The top k come from the project's sharded exact top-K
(`m5_jax.evaluate.search.ShardedGallery`), scores are dot products.

--query-text: tokenised with the run's own sentencepiece model and embedded by the
checkpoint's text tower (the run and step recorded in DIR's manifest; the same
forward as the export, the text alone present), then normalised like the
gallery's text vectors.
--query-id: the item's own vector of the chosen modalities; the item itself is
excluded from its results (a "more like this" list).
--faiss-index OUT: also writes the gallery as a faiss IndexFlatIP (inner product
= these scores) wrapped in an IndexIDMap2 whose ids are the `index` column, for
serving; needs `pip install faiss-cpu`.
"""
from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from m5_jax import embed

PROG = 'm5_jax.search'


def table_features(table, modalities, dim: int):
  """SplitFeatures of an export's table (absent modalities: zero vectors, present False)."""
  from m5_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
  pooled, present = {}, {}
  for m in modalities:
    pooled[m], present[m] = embed.column_vectors(table.column(m), dim)
  return features_lib.SplitFeatures(pooled=pooled, present=present,
                                    label=table.column('label').to_numpy(),
                                    instance=table.column('instance').to_numpy())


def gallery_vectors(manifest: dict, table, subset):
  """The export's items as the evaluators' features of `subset` (a `Combined`)."""
  features = table_features(table, subset, manifest['dim'])
  return features.combine(subset, manifest['normalize'], means=embed.load_means(manifest))


def text_host_batch(config, text: str, rows: int) -> dict:
  """An all-absent host batch of `rows` rows whose row 0 holds `text` as its title,
  preprocessed by the text plugin with the run's tokenizer (as the input pipeline)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from m5_jax import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from m5_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from m5_jax import modalities  # pylint: disable=g-import-not-at-top
  tokenizer = input_pipeline.load_tokenizer(config.input.tokenizer)
  example = {'title': tf.constant(text), 'present': {'text': tf.constant(1)}}
  fields = modalities.get('text').preprocess(example, config.modality.text, tokenizer)
  batch = batch_lib.zeros_batch(config, rows)
  batch['example_mask'][0] = True
  batch['index'][0] = 0
  for key, value in fields.items():
    batch['text'][key][0] = np.asarray(value)
  return batch


def text_query(manifest: dict, text: str) -> np.ndarray:
  """f32[D]: the text embedded by the export's checkpoint, normalised like the gallery."""
  from m5_jax import config_lib  # pylint: disable=g-import-not-at-top
  from m5_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from m5_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
  from m5_jax.evaluate import model_features  # pylint: disable=g-import-not-at-top
  if 'text' not in manifest['modalities']:
    raise embed.EmbedError(f'the run has no text tower (modalities {manifest["modalities"]}): '
                           'use --query-id')
  if not text.strip():
    raise embed.EmbedError('--query-text is empty')
  config = config_lib.validate(config_lib.load_workdir_config(manifest['workdir']))
  embedder = model_features.Embedder(manifest['workdir'], config, feature=manifest['feature'])
  embedder.restore(manifest['step'])
  rows = sharding_lib.batch_shards(embedder.mesh)
  out = embedder.embed_host_batch(text_host_batch(config, text, rows))
  if not out['present']['text'][0]:
    raise embed.EmbedError(f'--query-text {text!r} has no tokens')
  query = features_lib.SplitFeatures(
      pooled={'text': out['pooled']['text'][:1]}, present={'text': np.ones((1,), bool)},
      label=np.full((1,), -1), instance=np.full((1,), -1))
  return query.combine(('text',), manifest['normalize'],
                       means=embed.load_means(manifest)).features[0]


def import_faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise embed.EmbedError('--faiss-index needs faiss: pip install faiss-cpu') from None
  return faiss


def write_faiss(path: str, vectors: np.ndarray, valid: np.ndarray, ids: np.ndarray) -> None:
  faiss = import_faiss()
  index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
  index.add_with_ids(np.ascontiguousarray(vectors[valid], np.float32),
                     np.asarray(ids[valid], np.int64))
  faiss.write_index(index, path)


def search(directory: str, *, query_text: str | None = None, query_id: str | None = None,
           modalities: str = 'all', k: int = 10):
  """(results, query row or -1): results are dicts of rank, score, index, item_id,
  label, label_name, title, best first."""
  from m5_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
  from m5_jax.evaluate import search as search_lib  # pylint: disable=g-import-not-at-top
  if (query_text is None) == (query_id is None):
    raise embed.EmbedError('give one of --query-text or --query-id')
  if k < 1:
    raise embed.EmbedError(f'--k must be at least 1, got {k}')
  manifest, table = embed.read_embeddings(directory)
  subset = features_lib.parse_subset(modalities.replace(',', ''), tuple(manifest['modalities']))
  gallery = gallery_vectors(manifest, table, subset)
  row = -1
  if query_id is not None:
    matches = np.flatnonzero(table.column('item_id').to_numpy(zero_copy_only=False) == query_id)
    if not matches.size:
      raise embed.EmbedError(f'item {query_id!r} is not in {directory} '
                             f'({manifest["split"]}, {manifest["num_items"]} items)')
    row = int(matches[0])
    if not gallery.has_any[row]:
      raise embed.EmbedError(f'item {query_id!r} has none of the modalities '
                             f'{features_lib.subset_label(subset)}')
    query = gallery.features[row]
  else:
    query = text_query(manifest, query_text)
  index = search_lib.ShardedGallery(gallery.features, valid=gallery.has_any)
  scores, rows = index.search(query[None], k, exclude=np.array([row]))
  columns = {name: table.column(name).to_pylist() for name in embed.META_COLUMNS}
  results = []
  for rank, (score, r) in enumerate(zip(scores[0], rows[0]), 1):
    if r < 0:
      break  # fewer than k items have the modalities
    results.append({'rank': rank, 'score': float(score),
                    **{name: columns[name][r] for name in embed.META_COLUMNS}})
  return results, row, (manifest, table, gallery)


def parse_args(argv):
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0])
  parser.add_argument('--embeddings', required=True, help='an export of m5_jax.embed')
  parser.add_argument('--query-text', default=None)
  parser.add_argument('--query-id', default=None)
  parser.add_argument('--modalities', default='all', help="e.g. T,I (default: all exported)")
  parser.add_argument('--k', type=int, default=10)
  parser.add_argument('--faiss-index', default=None, help='also write a faiss index here')
  return parser.parse_args(argv)


def main(argv) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  try:
    if args.faiss_index:
      import_faiss()  # before any work
    results, row, (manifest, table, gallery) = search(
        args.embeddings, query_text=args.query_text, query_id=args.query_id,
        modalities=args.modalities, k=args.k)
    if args.faiss_index:
      write_faiss(args.faiss_index, gallery.features, gallery.has_any,
                  table.column('index').to_numpy())
  except embed.one_line_errors() as e:
    print(f'{PROG}: error: {e}', file=sys.stderr)
    return 1
  if row >= 0:
    print(f'query {args.query_id}: label {table.column("label")[row].as_py()} '
          f'({table.column("label_name")[row].as_py()}) {table.column("title")[row].as_py()}')
  else:
    print(f'query text {args.query_text!r}')
  excluded = '; the query item excluded' if row >= 0 else ''
  print(f'top {len(results)} of {manifest["split"]} (step {manifest["step"]}, '
        f'{int(gallery.has_any.sum())} items with the modalities{excluded}):')
  print(f'{"rank":>4} {"score":>7}  {"item_id":<14} {"label":>5}  {"label_name":<10} title')
  for r in results:
    title = (r['title'] or '')[:40]
    print(f'{r["rank"]:>4} {r["score"]:7.4f}  {r["item_id"]:<14} {r["label"]:>5}  '
          f'{r["label_name"] or "":<10} {title}')
  if args.faiss_index:
    print(f'faiss IndexFlatIP ({int(gallery.has_any.sum())} vectors, ids = index column) '
          f'-> {args.faiss_index}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
