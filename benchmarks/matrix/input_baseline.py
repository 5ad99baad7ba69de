r"""What M5Product-mini's inputs alone give on the matrix's tasks: no model at all.

    python benchmarks/matrix/input_baseline.py --release DIR [--out FILE.md]

The same splits and metrics as the eval binaries, on hand-made features of the
release's own files: character 1-2-gram TF-IDF of the title (text) and of the
pv values (table); mean-pooled pre-extracted image regions, video S3D rows and
audio log-mel (the `--features` release). Per modality set (the matrix's
sequence and each modality alone):

  Acc       multinomial logistic regression (sklearn) fitted on cls_train, top-1
            on cls_test (items lacking every modality of the set: not scored);
  mAP@10    coarse retrieval coarse_query -> coarse_gallery, score = sum over the
            set's modalities of the cosine similarity, M5Product metric
            (m5_jax.evaluate.metrics), query excluded from its own ranking.

This is the reference the matrix's numbers are read against: it says how much
category signal each modality carries on mini (the generator's design), and so
whether a finding that fails on mini fails for the data or for the model.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from data_prep import release
from m5_jax.evaluate import metrics as metrics_lib

SETS = ('T', 'P', 'I', 'V', 'A', 'T+I', 'T+I+P', 'T+I+P+V', 'T+I+P+V+A')
CODES = {'T': 'text', 'P': 'table', 'I': 'image', 'V': 'video', 'A': 'audio'}
DENSE = (('image', 'image_regions', 0), ('video', 'video_s3d', 0), ('audio', 'audio_mel', 1))
SPLITS = ('cls_train', 'cls_test', 'coarse_query', 'coarse_gallery')


def load(root: str):
  """(item ids, labels, {modality: float[N, D]}, {modality: bool[N] present}) of every item."""
  from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=g-import-not-at-top
  layout = release.ReleaseLayout()
  ids, labels, texts, tables = [], [], [], []
  dense = {m: [] for m, _, _ in DENSE}
  for item_id, rec in release.iter_annotations(os.path.join(root, layout.annotations)):
    title = rec.get('title') or ''
    try:
      pv = ' '.join(v for _, v in release.parse_pv(rec.get('pv') or ''))
    except release.MalformedPV:
      pv = ''
    ids.append(item_id)
    label = rec.get('label')
    labels.append(int(label) if isinstance(label, int) or str(label).isdigit() else -1)
    texts.append('' if release.has_bad_encoding(title) else title)
    tables.append(pv)
    for modality, name, axis in DENSE:
      try:
        array = np.load(layout.feature_path(root, name, item_id)).astype(np.float32)
        dense[modality].append(array.mean(axis) if np.isfinite(array).all() else None)
      except (OSError, ValueError):
        dense[modality].append(None)
  features, present = {}, {}
  for name, docs in (('text', texts), ('table', tables)):
    features[name] = TfidfVectorizer(analyzer='char', ngram_range=(1, 2)).fit_transform(
        docs).toarray().astype(np.float32)
    present[name] = np.array([bool(d.strip()) for d in docs])
  for modality, rows in dense.items():
    width = next(r.shape[0] for r in rows if r is not None)
    ok = np.array([r is not None and r.shape == (width,) for r in rows])
    features[modality] = np.stack([r if good else np.zeros(width, np.float32)
                                   for r, good in zip(rows, ok)])
    present[modality] = ok
  return np.array(ids), np.array(labels), features, present


def split_rows(root: str, ids: np.ndarray) -> dict[str, np.ndarray]:
  row_of = {item: i for i, item in enumerate(ids)}
  out = {}
  for split in SPLITS:
    with open(release.ReleaseLayout().split_path(root, split), encoding='utf-8') as f:
      out[split] = np.array([row_of[line.strip()] for line in f if line.strip() in row_of])
  return out


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def combine(features, present, modalities, rows):
  """Concatenated per-modality unit vectors (zeros where absent) and 'has any'."""
  blocks = [_unit(features[m][rows]) * present[m][rows, None] for m in modalities]
  return np.concatenate(blocks, 1), np.any([present[m][rows] for m in modalities], 0)


def probe_accuracy(features, present, labels, rows, modalities) -> tuple[float, int]:
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  xtr, htr = combine(features, present, modalities, rows['cls_train'])
  xte, hte = combine(features, present, modalities, rows['cls_test'])
  ytr, yte = labels[rows['cls_train']], labels[rows['cls_test']]
  keep_tr, keep_te = htr & (ytr >= 0), hte & (yte >= 0)
  scaler = StandardScaler().fit(xtr[keep_tr])
  clf = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(xtr[keep_tr]),
                                                     ytr[keep_tr])
  predictions = clf.predict(scaler.transform(xte[keep_te]))
  return float(100 * (predictions == yte[keep_te]).mean()), int(keep_te.sum())


def retrieval_map(features, present, labels, ids, rows, modalities, k: int = 10) -> float:
  q, hq = combine(features, present, modalities, rows['coarse_query'])
  g, hg = combine(features, present, modalities, rows['coarse_gallery'])
  scores = q @ g.T
  scores[:, ~hg] = -np.inf
  q_ids, g_ids = ids[rows['coarse_query']], ids[rows['coarse_gallery']]
  own = np.array([{i: j for j, i in enumerate(g_ids)}.get(i, -1) for i in q_ids])
  for r, j in enumerate(own):
    if j >= 0:
      scores[r, j] = -np.inf
  qk, gk = labels[rows['coarse_query']], np.where(hg, labels[rows['coarse_gallery']], -1)
  scored = hq & (qk >= 0)
  top = np.argsort(-scores[scored], axis=1, kind='stable')[:, :max(k, 10)]
  hits = metrics_lib.ranked_hits(top, qk[scored], gk)
  in_gallery = (own[scored] >= 0) & hg[np.maximum(own[scored], 0)]
  positives = metrics_lib.count_positives(qk[scored], gk, in_gallery)
  ranked = int(hg.sum()) - in_gallery.astype(np.int64)
  return metrics_lib.retrieval_metrics(hits, positives, ranked, (1, 5, 10))[f'm5_map@{k}']


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--release', required=True, help='a make_mini --features release')
  parser.add_argument('--out', default=None, help='Markdown file to write (default: print)')
  args = parser.parse_args(argv)
  ids, labels, features, present = load(args.release)
  rows = split_rows(args.release, ids)
  train_labels = labels[rows['cls_train']]
  test_labels = labels[rows['cls_test']]
  majority = np.bincount(train_labels[train_labels >= 0]).argmax()
  lines = ['| Modalities | Acc (probe) | mAP@10 (coarse) | cls_test items |', '|---|---:|---:|---:|']
  for label in SETS:
    modalities = [CODES[c] for c in label.split('+')]
    acc, n = probe_accuracy(features, present, labels, rows, modalities)
    map10 = retrieval_map(features, present, labels, ids, rows, modalities)
    lines.append(f'| {label} | {acc:.1f} | {map10:.1f} | {n} |')
    print(lines[-1], flush=True)
  known = test_labels >= 0
  lines.append(f'\nMajority class of cls_train on cls_test: '
               f'{100 * (test_labels[known] == majority).mean():.1f}% '
               f'({known.sum()} items); {len(rows["coarse_query"])} coarse queries.')
  text = '\n'.join(lines) + '\n'
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
