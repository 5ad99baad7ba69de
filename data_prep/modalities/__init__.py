"""The data side of the modalities stored from their own release files, one file each.

m5_jax/modalities/<name>.py is a modality's model side (batch fields, embedder,
masking, loss); this is what the TFDS build (data_prep/m5product) stores for it.
Text and table are fields of the annotations record, read by
data_prep/m5product/examples.py; every other modality is a `DataSide`:

  name: str             the modality: its key in the example's `present` and in the
                        build report's absent counts (the model side's plugin name)
  features(sizes)       {key: tfds FeatureConnector}: what the build stores for it in
                        sizes.form ('raw' | 'features'); `sizes` is the builder config
                        or the ConvertOptions (form, image_size, video_size, ...)
  read(item_id, record, options) -> {key: value}
                        one item's stored values (options: examples.ConvertOptions,
                        with root, layout, form, sizes and decode bounds; record: its
                        annotations). Raises decode.Absent (its reason is counted) or
                        release.UnsafePathError when the item does not have it
  absent(options) -> {key: value}
                        the stored values of an item without it (same keys and shapes)

Large float tensors are best stored as their raw bytes (tfds Encoding.BYTES): half
the size of a float_list for float16, and about 30x faster to serialize.

The build stores the three built in (BUILTIN: image.py, video.py, audio.py here),
then those its config's `extra_modalities` names: import paths of modules that
define `DATA`. So a new modality is one file that defines both its model side
(`PLUGIN`) and its data side (`DATA`), e.g. tests/toy_rating_modality.py, built
with `M5ProductConfig(..., extra_modalities=('toy_rating_modality',))`. Its files
sit in a folder of its own under the release root (release.safe_path keeps them
there); the built-in release layout (data_prep/release.py) is unchanged. Beam
workers import the module by the same path, so it must be importable there too.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Protocol

from data_prep import release
from m5_jax import plugin_import  # standard library only: no jax here

FROM_ANNOTATIONS = ('text', 'table')  # read by data_prep/m5product/examples.py
BUILTIN = tuple(m for m in release.MODALITIES if m not in FROM_ANNOTATIONS)


class DataSide(Protocol):
  """What a modality's data side provides (see the module docstring)."""
  name: str

  def features(self, sizes) -> Mapping[str, Any]:
    ...

  def read(self, item_id: str, record: Mapping, options) -> dict[str, Any]:
    ...

  def absent(self, options) -> dict[str, Any]:
    ...


def get(name: str) -> DataSide:
  """DATA of data_prep/modalities/<name>.py for a built-in, else of the module `name`."""
  path = f'data_prep.modalities.{name}' if name in BUILTIN else name
  module = plugin_import.import_if_exists(path)
  if module is None:
    raise ValueError(f'modality {name!r}: no importable module {path!r} defining DATA '
                     f'(built in: {", ".join(BUILTIN)})')
  data = getattr(module, 'DATA', None)
  if data is None:
    raise ValueError(f'modality {name!r}: module {path} defines no DATA (its data side)')
  return data


@functools.lru_cache(maxsize=None)
def of_build(extra: tuple[str, ...] = ()) -> tuple[DataSide, ...]:
  """The data sides a build stores, in order: the built-in ones, then `extra`'s
  (looked up once per process: `examples.convert` asks for every item)."""
  sides = tuple(get(name) for name in (*BUILTIN, *extra))
  stored = [*FROM_ANNOTATIONS, *(side.name for side in sides)]
  repeated = sorted({n for n in stored if stored.count(n) > 1})
  if repeated:
    raise ValueError(f'extra_modalities {tuple(extra)}: modality {", ".join(repeated)} is '
                     'stored twice')
  return sides


def names(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
  """Every modality a build stores, in `present` order (text, table, image, ...)."""
  return (*FROM_ANNOTATIONS, *(side.name for side in of_build(extra)))
