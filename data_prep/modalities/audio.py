"""Audio on the data side: one 80 x 751 log-mel in both forms (from the mp3, or the
release's pre-extracted one), with its number of valid frames."""
from __future__ import annotations

import numpy as np

from data_prep import decode
from data_prep import release

MEL_SHAPE = (decode.N_MELS, decode.MEL_FRAMES)  # = release.FEATURE_SHAPES['audio_mel']


class Audio:
  name = 'audio'

  def features(self, sizes):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    f = tfds.features
    shape = MEL_SHAPE if sizes.form == 'raw' else release.FEATURE_SHAPES['audio_mel']
    return {'audio_mel': f.Tensor(shape=shape, dtype=np.float16, encoding=f.Encoding.BYTES),
            'audio_frames': f.Scalar(dtype=np.int32)}

  def read(self, item_id, record, options):
    del record
    layout, root = options.layout, options.root
    if options.form == 'raw':
      mel, frames = decode.log_mel(decode.decode_audio(layout.media_path(root, 'audio', item_id)))
    else:
      mel, frames = decode.load_feature(layout.feature_path(root, 'audio_mel', item_id),
                                        release.FEATURE_SHAPES['audio_mel'], variable_axis=1,
                                        bounds=options.bounds, store_dtype=np.float16)
    return {'audio_mel': mel.astype(np.float16), 'audio_frames': np.int32(frames)}

  def absent(self, options):
    shape = MEL_SHAPE if options.form == 'raw' else release.FEATURE_SHAPES['audio_mel']
    return {'audio_mel': np.zeros(shape, np.float16), 'audio_frames': np.int32(0)}


DATA = Audio()
