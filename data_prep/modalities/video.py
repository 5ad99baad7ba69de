"""Video on the data side: frames at 1 fps, or the pre-extracted S3D rows."""
from __future__ import annotations

import numpy as np

from data_prep import decode
from data_prep import release


class Video:
  name = 'video'

  def features(self, sizes):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    f = tfds.features
    if sizes.form == 'raw':  # frames at 1 fps, as many as the video has (<= max_video_frames)
      frame = (sizes.video_size, sizes.video_size, 3)
      return {'video': f.Video(shape=(None, *frame), encoding_format='jpeg')}
    return {'video_s3d': f.Tensor(shape=release.FEATURE_SHAPES['video_s3d'], dtype=np.float16,
                                  encoding=f.Encoding.BYTES),
            'video_frames': f.Scalar(dtype=np.int32)}

  def read(self, item_id, record, options):
    del record
    layout, root = options.layout, options.root
    if options.form == 'raw':
      return {'video': decode.decode_video(layout.media_path(root, 'video', item_id),
                                           options.video_size, options.max_video_frames,
                                           options.video_fps, options.bounds)}
    s3d, rows = decode.load_feature(layout.feature_path(root, 'video_s3d', item_id),
                                    release.FEATURE_SHAPES['video_s3d'], variable_axis=0,
                                    bounds=options.bounds, store_dtype=np.float16)
    return {'video_s3d': s3d, 'video_frames': np.int32(rows)}

  def absent(self, options):
    if options.form == 'raw':
      return {'video': np.zeros((0, options.video_size, options.video_size, 3), np.uint8)}
    return {'video_s3d': np.zeros(release.FEATURE_SHAPES['video_s3d'], np.float16),
            'video_frames': np.int32(0)}


DATA = Video()
