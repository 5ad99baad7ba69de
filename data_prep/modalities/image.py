"""Image on the data side: the main product image, or its pre-extracted regions."""
from __future__ import annotations

import numpy as np

from data_prep import decode
from data_prep import release


class Image:
  name = 'image'

  def features(self, sizes):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    f = tfds.features
    if sizes.form == 'raw':
      s = sizes.image_size
      return {'image': f.Image(shape=(s, s, 3), encoding_format='jpeg')}
    shapes = release.FEATURE_SHAPES
    return {'image_regions': f.Tensor(shape=shapes['image_regions'], dtype=np.float16,
                                      encoding=f.Encoding.BYTES),
            'image_boxes': f.Tensor(shape=shapes['image_boxes'], dtype=np.float32)}

  def read(self, item_id, record, options):
    del record
    layout, root = options.layout, options.root
    if options.form == 'raw':
      return {'image': decode.decode_image(layout.media_path(root, 'image', item_id),
                                           options.image_size, options.bounds)}
    shapes = release.FEATURE_SHAPES
    regions, _ = decode.load_feature(layout.feature_path(root, 'image_regions', item_id),
                                     shapes['image_regions'], bounds=options.bounds,
                                     store_dtype=np.float16)
    boxes, _ = decode.load_feature(layout.feature_path(root, 'image_boxes', item_id),
                                   shapes['image_boxes'], bounds=options.bounds)
    return {'image_regions': regions, 'image_boxes': boxes}

  def absent(self, options):
    if options.form == 'raw':
      return {'image': np.zeros((options.image_size, options.image_size, 3), np.uint8)}
    shapes = release.FEATURE_SHAPES
    return {'image_regions': np.zeros(shapes['image_regions'], np.float16),
            'image_boxes': np.zeros(shapes['image_boxes'], np.float32)}


DATA = Image()
