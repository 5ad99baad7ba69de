"""PNG plots of evaluation results: P@K curves, a 2-D projection of features, per-class
accuracy along the long tail."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_precision_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str,
                          title: str = '') -> str:
  """P@K (M5Product) against K, one line per modality set; the legend beside the
  axes, where it cannot cover a curve."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4))
  for label, curve in curves.items():
    ax.plot(curve['k'], curve['m5_prec'], label=label)
  ax.set_xscale('log')
  ax.set_xlabel('K (ranked items, log scale)')
  ax.set_ylabel('P@K (%)')
  ax.set_title(title or 'precision at K')
  ax.grid(alpha=0.3)
  ax.legend(title='modalities', fontsize=8, loc='upper left', bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0)
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path


# Categories the projection plot colours one by one (tab20 has 20 colours; the
# rest, the least frequent, share one grey).
PROJECTION_COLOURED = 19


def plot_projection(features: np.ndarray, labels: np.ndarray, path: str, *, method: str = 'pca',
                    max_points: int = 5000, seed: int = 0, title: str = '') -> str | None:
  """A 2-D projection (PCA or t-SNE) of `features`, coloured by category.

  Labels are ids (12-digit or hashed, not small indices): the most frequent
  PROJECTION_COLOURED categories get a colour and a legend entry each, the rest one
  grey 'other' entry. PCA axes say how much variance each component explains.
  Returns None (and draws nothing) with fewer than 3 labelled points.
  """
  from sklearn import decomposition, manifold  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  keep = np.flatnonzero(labels >= 0)
  if len(keep) < 3:
    logging.warning('projection plot skipped: %d labelled points', len(keep))
    return None
  if len(keep) > max_points:
    keep = np.sort(rng.choice(keep, max_points, replace=False))
  x, y = np.asarray(features[keep], np.float32), np.asarray(labels[keep], np.int64)
  if method == 'tsne':
    xy = manifold.TSNE(2, random_state=seed, init='pca',
                       perplexity=min(30.0, max(2.0, len(x) / 4))).fit_transform(x)
    axis_names = ('t-SNE 1', 't-SNE 2')
  else:
    pca = decomposition.PCA(2, random_state=seed).fit(x)
    xy = pca.transform(x)
    axis_names = tuple(f'PC {i + 1} ({100 * r:.0f}% of variance)'
                       for i, r in enumerate(pca.explained_variance_ratio_))
  categories, counts = np.unique(y, return_counts=True)
  by_frequency = categories[np.lexsort((categories, -counts))]
  coloured = by_frequency[:PROJECTION_COLOURED]
  others = by_frequency[PROJECTION_COLOURED:]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  if len(others):
    rows = np.isin(y, others)
    ax.scatter(xy[rows, 0], xy[rows, 1], s=5, alpha=0.5, color='lightgray',
               label=f'{len(others)} other categories ({int(rows.sum())})')
  palette = plt.get_cmap('tab20')
  for i, category in enumerate(coloured):
    rows = y == category
    ax.scatter(xy[rows, 0], xy[rows, 1], s=6, alpha=0.8, color=palette(i % 20),
               label=f'{category} ({int(rows.sum())})')
  ax.set_xlabel(axis_names[0])
  ax.set_ylabel(axis_names[1])
  ax.set_title(title or f'{method.upper()} of the embeddings, coloured by category')
  ax.grid(alpha=0.3)
  handles, names = ax.get_legend_handles_labels()
  if len(others):  # drawn first (underneath), listed last
    handles, names = handles[1:] + handles[:1], names[1:] + names[:1]
  ax.legend(handles, names, title='category (items)', fontsize=7, title_fontsize=8,
            markerscale=2, loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path


def plot_long_tail(per_class: Mapping[int, float], class_counts: Mapping[int, int], path: str,
                   title: str = '') -> str:
  """Per-class accuracy with classes sorted by training frequency (head left, tail right)."""
  classes = sorted(per_class, key=lambda c: (-class_counts.get(c, 0), c))
  plt = _pyplot()
  fig, ax1 = plt.subplots(figsize=(7, 4))
  positions = np.arange(len(classes))
  ax1.bar(positions, [class_counts.get(c, 0) for c in classes], color='lightgray',
          label='training examples')
  if any(class_counts.get(c, 0) > 0 for c in classes):
    ax1.set_yscale('log')
  ax1.set_xlabel('classes, by training frequency')
  ax1.set_ylabel('training examples')
  ax2 = ax1.twinx()
  ax2.plot(positions, [per_class[c] for c in classes], 'o-', ms=3, color='tab:blue',
           label='accuracy')
  ax2.set_ylabel('accuracy (%)')
  ax2.set_ylim(-3, 103)  # markers at 0 and 100 stay whole
  handles = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
  ax1.legend(handles, [h.get_label() for h in handles], fontsize=8, loc='upper left',
             bbox_to_anchor=(1.12, 1.0), borderaxespad=0.0)
  ax1.set_title(title or 'per-class accuracy along the long tail')
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path
