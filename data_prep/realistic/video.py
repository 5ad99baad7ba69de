"""Product videos: a slow pan and zoom over the product picture, H.264 at 24 fps.

The stage (background, placement, colour variant) is drawn like a listing image;
the camera moves from one window of it to another over the clip, which lasts as
long as the narration (data_prep/realistic/speech.py). The mp4 has no audio
stream: as in mini, audios/{id}.mp3 is the track "extracted" from it.
"""
from __future__ import annotations

import av
import numpy as np
from PIL import Image

from data_prep.mini import render as mini_render
from data_prep.realistic import image as image_lib
from data_prep.realistic import world as world_lib

VIDEO_FPS = mini_render.VIDEO_FPS  # the encoder's rate
VIDEO_SIZE = 112        # the builder's default video_size
STAGE_SIZE = 160        # camera windows of 72-160 px, shown at 112


def frames(world: world_lib.World, product: world_lib.Product, seconds: int, rng) -> np.ndarray:
  """uint8 [seconds * 24, 112, 112, 3]: the camera window eases from start to end."""
  stage = image_lib.compose(world, product, rng, STAGE_SIZE, scale=(0.55, 0.85), badge_prob=0.0)
  windows = []
  for _ in range(2):
    side = float(rng.uniform(0.45, 1.0)) * STAGE_SIZE
    x0 = float(rng.uniform(0, STAGE_SIZE - side))
    y0 = float(rng.uniform(0, STAGE_SIZE - side))
    windows.append(np.array([x0, y0, x0 + side, y0 + side], np.float64))
  n = seconds * VIDEO_FPS
  out = np.empty((n, VIDEO_SIZE, VIDEO_SIZE, 3), np.uint8)
  for t in range(n):
    u = t / max(n - 1, 1)
    u = u * u * (3.0 - 2.0 * u)           # smoothstep: ease in and out
    box = tuple(float(v) for v in windows[0] * (1.0 - u) + windows[1] * u)
    out[t] = np.asarray(stage.resize((VIDEO_SIZE, VIDEO_SIZE), Image.BILINEAR, box=box))
  return out


def _yuv420(rgb: np.ndarray) -> np.ndarray:
  """[T, H, W, 3] RGB -> [T, H * 3 / 2, W] planar yuv420p (BT.601 limited range,
  integer maths as in libswscale's C path), in numpy so the bytes do not depend on
  the CPU's SIMD paths."""
  x = rgb.astype(np.int32)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
  t, h, w = y.shape
  sub = lambda c: (c[:, 0::2, 0::2] + c[:, 1::2, 0::2] + c[:, 0::2, 1::2] + c[:, 1::2, 1::2])
  r4, g4, b4 = sub(r), sub(g), sub(b)           # 2x2 sums: chroma of the block mean
  u = ((-38 * r4 - 74 * g4 + 112 * b4 + 512) >> 10) + 128
  v = ((112 * r4 - 94 * g4 - 18 * b4 + 512) >> 10) + 128
  planes = np.concatenate([y, u.reshape(t, h // 4, w), v.reshape(t, h // 4, w)], axis=1)
  return np.clip(planes, 0, 255).astype(np.uint8)


def encode_mp4(video: np.ndarray) -> bytes:
  """H.264 in MP4 from RGB frames [T, H, W, 3] (mini's encoder settings, in colour)."""
  frames = (av.VideoFrame.from_ndarray(yuv, format='yuv420p') for yuv in _yuv420(video))
  return mini_render.encode_h264(video.shape[2], video.shape[1], frames)
