"""Bounded media decoding for the M5Product release.

Every decoder either returns arrays of a fixed, documented shape or raises
`Absent(reason)` with a reason from `release.ABSENT_REASONS`; the builder counts
the reason and marks the modality absent. No decoder reads more than its bounds:

  image   header checked against `max_pixels` before any pixel is decoded
          (decompression bombs), JPEG decoded at reduced scale when possible.
  video   frame size checked against `max_pixels` from the stream header; at
          most `max_frames` frames sampled at `fps` (1 per second), decoding
          stops after `max_seconds` of stream time or `max_decoded_frames`.
  audio   at most `seconds` of audio decoded, resampled to 16 kHz mono.
  .npy    header (shape, dtype) and data length checked before the array is read.
  A file whose content is not what its extension says fails as `corrupt_file`,
  except another image format in an image file (a PNG named .jpg decodes: the
  pixels are fine, and such files are common in crawled shop images).
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import av
import numpy as np
from PIL import Image
import scipy.fft

from data_prep import release


class Absent(Exception):
  """A modality that cannot be used for this item; `reason` is in ABSENT_REASONS."""

  def __init__(self, reason: str, detail: str = ''):
    assert reason in release.ABSENT_REASONS, reason
    super().__init__(f'{reason}: {detail}' if detail else reason)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Bounds:
  """Decode limits; anything beyond them is `too_large` or simply not read."""
  max_image_pixels: int = 64_000_000   # 8k x 8k source image
  max_video_pixels: int = 4096 * 2160  # per frame (4K)
  max_video_seconds: float = 12.0      # stream time decoded
  max_decoded_frames: int = 12 * 120   # frames decoded before giving up (120 fps)
  max_feature_bytes: int = 64 << 20    # one .npy


def check_file(path: str) -> None:
  """Raises Absent('missing_file' | 'empty_file')."""
  try:
    size = os.path.getsize(path)
  except OSError:
    raise Absent('missing_file', path) from None
  if size == 0:
    raise Absent('empty_file', path)


# ---------------------------------------------------------------- image

def decode_image(path: str, size: int, bounds: Bounds = Bounds()) -> np.ndarray:
  """Image file -> uint8 [size, size, 3] RGB, resized (aspect not kept)."""
  check_file(path)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(path) as im:
        width, height = im.size
        if width * height > bounds.max_image_pixels:
          raise Absent('too_large', f'{width}x{height} image')
        if im.format == 'JPEG':
          im.draft('RGB', (size, size))  # DCT-domain downscale: decodes far fewer pixels
        im = im.convert('RGB').resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise Absent('too_large', str(e)) from None
  except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
    raise Absent('corrupt_file', f'{path}: {e}') from None


# ---------------------------------------------------------------- video

def decode_video(path: str, size: int, max_frames: int = 12, fps: float = 1.0,
                 bounds: Bounds = Bounds()) -> np.ndarray:
  """Video file -> uint8 [T, size, size, 3], T <= max_frames, one frame per 1/fps s.

  Frame k is the first decoded frame at or after k / fps seconds (relative to
  the first frame). Any demux/decode error makes the whole video corrupt.
  """
  check_file(path)
  frames = []
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise Absent('corrupt_file', f'{path}: no video stream')
      if container.format.name.endswith('_pipe') or container.format.name == 'image2':
        # FFmpeg opens a still image as a one-frame "video": not what .mp4 promises.
        raise Absent('corrupt_file', f'{path}: a {container.format.name} image, not a video')
      stream = container.streams.video[0]
      stream.thread_type = 'AUTO'
      width, height = stream.codec_context.width, stream.codec_context.height
      if width * height > bounds.max_video_pixels:
        raise Absent('too_large', f'{width}x{height} video')
      start, decoded = None, 0
      for frame in container.decode(stream):
        decoded += 1
        t = frame.time if frame.time is not None else decoded / float(stream.average_rate or 24)
        start = t if start is None else start
        t -= start
        if t >= bounds.max_video_seconds or decoded > bounds.max_decoded_frames:
          break
        if t + 1e-6 >= len(frames) / fps:
          rgb = frame.reformat(width=size, height=size, format='rgb24')
          frames.append(rgb.to_ndarray())
          if len(frames) == max_frames:
            break
  except Absent:
    raise
  except (av.error.FFmpegError, ValueError, IndexError, OSError) as e:
    raise Absent('corrupt_file', f'{path}: {e}') from None
  if not frames:
    raise Absent('corrupt_file', f'{path}: no frames decoded')
  return np.stack(frames).astype(np.uint8)


# ---------------------------------------------------------------- audio

SAMPLE_RATE = 16_000
N_FFT = 1024
HOP = 256
N_MELS = 80
AUDIO_SECONDS = 12.0
MEL_FRAMES = 1 + int(AUDIO_SECONDS * SAMPLE_RATE) // HOP  # 751
LOG_FLOOR = 1e-6


def decode_audio(path: str, seconds: float = AUDIO_SECONDS,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Audio file -> float32 [n] mono samples at `sample_rate`, n <= seconds * rate."""
  check_file(path)
  limit = int(seconds * sample_rate)
  chunks, total = [], 0
  try:
    with av.open(path) as container:
      if not container.streams.audio:
        raise Absent('corrupt_file', f'{path}: no audio stream')
      stream = container.streams.audio[0]
      resampler = av.AudioResampler(format='flt', layout='mono', rate=sample_rate)

      def take(frames):
        nonlocal total
        for f in frames:
          chunk = f.to_ndarray().reshape(-1)
          chunks.append(chunk)
          total += chunk.size

      for frame in container.decode(stream):
        take(resampler.resample(frame))
        if total >= limit:
          break
      else:
        take(resampler.resample(None))  # flush the resampler's delay line
  except Absent:
    raise
  except (av.error.FFmpegError, ValueError, IndexError, OSError) as e:
    raise Absent('corrupt_file', f'{path}: {e}') from None
  if total == 0:
    raise Absent('corrupt_file', f'{path}: no audio samples decoded')
  return np.concatenate(chunks)[:limit].astype(np.float32)


def _hz_to_mel(hz):
  """Slaney mel scale (librosa's default, htk=False)."""
  hz = np.asarray(hz, dtype=np.float64)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep,
                  hz / f_sp)


def _mel_to_hz(mel):
  mel = np.asarray(mel, dtype=np.float64)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                   n_mels: int = N_MELS) -> np.ndarray:
  """float32 [n_mels, n_fft // 2 + 1] Slaney-normalised triangles, 0 .. sr/2."""
  fft_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
  lower = (fft_hz[None, :] - mel_hz[:-2, None]) / np.diff(mel_hz)[:-1, None]
  upper = (mel_hz[2:, None] - fft_hz[None, :]) / np.diff(mel_hz)[1:, None]
  weights = np.maximum(0, np.minimum(lower, upper))
  weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
  return weights.astype(np.float32)


_MEL = mel_filterbank()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann


def log_mel(samples: np.ndarray, num_frames: int = MEL_FRAMES) -> tuple[np.ndarray, int]:
  """float32 samples (16 kHz) -> (float32 [80, num_frames] log-mel, valid frames).

  Centred STFT (reflect padding, like librosa), power spectrum, Slaney mel,
  natural log of (mel + 1e-6). Columns past the valid frames are 0.
  """
  samples = np.asarray(samples, dtype=np.float32)[: (num_frames - 1) * HOP]
  pad = N_FFT // 2
  mode = 'reflect' if samples.size > pad else 'constant'
  padded = np.pad(samples, pad, mode=mode)
  valid = 1 + samples.size // HOP
  # The frames as a strided view: no [valid, N_FFT] index array and gather.
  frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:valid]
  spectrum = np.abs(scipy.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # float32 [valid, 513]
  mel = np.log(spectrum @ _MEL.T + LOG_FLOOR).T                            # [80, valid]
  out = np.zeros((N_MELS, num_frames), np.float32)
  out[:, :valid] = mel
  return out, valid


# ---------------------------------------------------------------- pre-extracted features

def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
  """(shape, fortran_order, dtype) from an open .npy file, reading the header only."""
  version = np.lib.format.read_magic(f)
  if version == (1, 0):
    return np.lib.format.read_array_header_1_0(f)
  if version == (2, 0):
    return np.lib.format.read_array_header_2_0(f)
  raise ValueError(f'unsupported .npy version {version}')


def load_feature(path: str, shape: tuple[int, ...], variable_axis: int | None = None,
                 bounds: Bounds = Bounds(), store_dtype=np.float32) -> tuple[np.ndarray, int]:
  """A feature .npy -> (array zero-padded to `shape` in `store_dtype`, valid length along
  variable_axis).

  The file must have exactly `shape`, except along `variable_axis` where 1..shape
  entries are accepted (video rows, audio frames); trailing all-zero entries
  there are padding, not valid. The header is checked before any data is read:
  a non-float dtype or another shape (a header claiming huge dimensions
  included) is `bad_features`, and so are non-finite values or no valid entry;
  a file that is not a .npy, or whose data is shorter or longer than its header
  says, is `corrupt_file`. Values that `store_dtype` cannot hold (|x| past float16's
  65504, which would be stored as inf) are `bad_features` too.
  """
  check_file(path)
  size = os.path.getsize(path)
  if size > bounds.max_feature_bytes:
    raise Absent('too_large', f'{path}: {size} bytes')
  with open(path, 'rb') as f:
    try:
      got, fortran, dtype = _npy_header(f)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
      raise Absent('corrupt_file', f'{path}: not a .npy file ({e})') from None
    got = tuple(got)
    if dtype.kind != 'f':
      raise Absent('bad_features', f'{path}: dtype {dtype}')
    ok = len(got) == len(shape) and all(
        (1 <= g <= s) if axis == variable_axis else g == s
        for axis, (g, s) in enumerate(zip(got, shape)))
    if not ok:
      raise Absent('bad_features', f'{path}: shape {got}, want {shape}')
    want_bytes = int(np.prod(got)) * dtype.itemsize
    if size - f.tell() != want_bytes:
      raise Absent('corrupt_file', f'{path}: {size - f.tell()} data bytes, header says '
                   f'{want_bytes}')
    array = np.frombuffer(f.read(want_bytes), dtype).reshape(
        got, order='F' if fortran else 'C').astype(np.float32)
  if not np.isfinite(array).all():
    raise Absent('bad_features', f'{path}: non-finite values')
  array = array.astype(store_dtype, copy=False)
  if not np.isfinite(array).all():
    raise Absent('bad_features', f'{path}: values beyond the {np.dtype(store_dtype).name} '
                 f'range (|x| > {float(np.finfo(store_dtype).max):g})')
  valid = 0
  if variable_axis is not None:
    other_axes = tuple(a for a in range(array.ndim) if a != variable_axis)
    nonzero = np.flatnonzero(np.any(array != 0, axis=other_axes))
    valid = int(nonzero[-1]) + 1 if nonzero.size else 0
    if not valid:
      raise Absent('bad_features', f'{path}: all zeros')
  if got != tuple(shape):
    pad = [(0, s - g) for g, s in zip(got, shape)]
    array = np.pad(array, pad)
  return array, valid
