"""Renders one latent product listing into every modality of the release.

Every function is a pure function of (world, product, rng): each modality of
each item draws from its own RNG stream `item_rng(seed, index, stream)`, so an
item renders the same whatever worker renders it, and in whatever order.
Encoders run single-threaded with bit-exact muxing, so the bytes are the same too.
"""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Iterable

import av
import numpy as np
from PIL import Image, ImageDraw

from data_prep import decode
from data_prep import release
from data_prep.mini import world as world_lib

IMAGE_SIZE = 128
VIDEO_SIZE = 64
VIDEO_FPS = 24
MIN_SECONDS, MAX_SECONDS = 3, 12
AUDIO_RATE = 16000
SPEEDS_PX_PER_S = (6.0, 12.0, 18.0)     # by tempo: < 32 px per second, so 1 fps sampling sees it
BEATS_PER_S = (1.0, 2.0, 3.0)           # by tempo (the audio track of the same video)
HARMONICS = {'sine': (1.0,), 'bright': (1.0, 0.5, 0.25), 'hollow': (1.0, 0.0, 0.33, 0.0, 0.2)}
NOT_A_VIDEO = (b'<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n'
               b'<body><h1>404 Not Found</h1><p>The requested video is unavailable.</p></body></html>\n')
STREAMS = {'text': 1, 'table': 2, 'image': 3, 'video': 4, 'audio': 5, 'clip': 6, 'features': 7,
           'record': 8, 'audio_noise': 9}


def item_rng(seed: int, index: int, stream: str) -> np.random.Generator:
  return np.random.default_rng([seed, index, STREAMS[stream]])


# ------------------------------------------------------------------ text / table

def render_title(world: world_lib.World, product: world_lib.Product, rng, cue_noise: float) -> str:
  """Brand + selling points (product) + category cue + filler + spec (listing)."""
  words = [world_lib.SELLING_POINTS[s] for s in product.selling_points if rng.random() < 0.85]
  words.append(world_lib.TITLE_CUES[world.cue('text', product.category, rng, cue_noise)])
  words += [world_lib.TITLE_FILLERS[k] for k in
            rng.choice(len(world_lib.TITLE_FILLERS), int(rng.integers(1, 4)), replace=False)]
  if rng.random() < 0.5:
    words.append(world_lib.SPEC_TOKENS[int(rng.integers(len(world_lib.SPEC_TOKENS)))])
  words = [words[k] for k in rng.permutation(len(words))]
  brand = world_lib.BRANDS[product.brand]
  words.insert(0 if rng.random() < 0.8 else int(rng.integers(len(words) + 1)), brand)
  title = words[0]
  for w in words[1:]:
    title += ' ' if (w.isascii() or title[-1].isascii() or rng.random() < 0.3) else ''
    title += w
  return title


def render_pv(world: world_lib.World, product: world_lib.Product, rng,
              cue_noise: float) -> list[tuple[str, str]]:
  """风格 (category cue) and 材质 (material, product-level) among listing filler keys."""
  style = world_lib.STYLE_CUES[world.cue('table', product.category, rng, cue_noise)]
  pairs = [(world_lib.STYLE_KEY, style),
           (world_lib.MATERIAL_KEY, world_lib.MATERIALS[product.material])]
  keys = list(world_lib.PV_FILLERS) + list(world_lib.PV_GENERATED)
  for k in rng.choice(len(keys), int(rng.integers(4, 9)), replace=False):
    key = keys[k]
    if key == '货号':
      value = f'{"ABCDHKMX"[rng.integers(8)]}{"ABCDHKMX"[rng.integers(8)]}-{rng.integers(100, 9999)}'
    elif key == '重量':
      value = f'{rng.integers(50, 950)}g' if rng.random() < 0.6 else f'{rng.integers(1, 9)}.{rng.integers(10)}kg'
    else:
      values = world_lib.PV_FILLERS[key]
      value = values[int(rng.integers(len(values)))]
    pairs.append((key, value))
  return [pairs[k] for k in rng.permutation(len(pairs))]


def malform_pv(pairs, rng) -> str:
  """A pv string that release.parse_pv rejects (seen in crawled data)."""
  kind = int(rng.integers(3))
  if kind == 0:    # one pair written with ':' instead of '#:#'
    return release.format_pv(pairs).replace('#:#', ':', 1)
  if kind == 1:    # a pair with two separators
    return release.format_pv(pairs) + f'#;#{pairs[0][0]}#:#{pairs[0][1]}#:#{pairs[-1][1]}'
  return '#:#' + pairs[0][1] + '#;#' + release.format_pv(pairs[1:])   # empty key


def annotation_line(item_id: str, title, pv, label: int) -> bytes:
  """One `"id": {record}` member of the annotations object, as UTF-8 bytes.

  title/pv None leave the key out; a bytes title is written raw (non-UTF-8).
  """
  record = {}
  if title is not None:
    record['title'] = '\x00RAW\x00' if isinstance(title, bytes) else title
  if pv is not None:
    record['pv'] = pv
  record['label'] = int(label)
  record['url'] = f'https://item.taobao.com/item.htm?id={item_id}'
  line = (json.dumps(item_id) + ': ' + json.dumps(record, ensure_ascii=False)).encode('utf-8')
  if isinstance(title, bytes):
    line = line.replace(b'"\\u0000RAW\\u0000"', b'"' + title + b'"')
  return line


def non_utf8(title: str) -> bytes:
  """The title as GBK bytes (a common mojibake source); never valid UTF-8."""
  raw = title.encode('gbk', errors='replace').replace(b'\\', b'/').replace(b'"', b"'")
  try:
    raw.decode('utf-8')
    raw = b'\xb0\xfc' + raw      # GBK '包' prefix: an invalid UTF-8 start
  except UnicodeDecodeError:
    pass
  return raw


# ------------------------------------------------------------------ image

@dataclasses.dataclass(frozen=True)
class ImageScene:
  shape: int
  colour: tuple[int, int, int]
  colour_index: int
  pattern: int
  center: tuple[float, float]
  radius: float
  background: tuple[int, int, int]
  logo: tuple[int, int] | None     # corner shop logo (listing noise)


def image_scene(world: world_lib.World, product: world_lib.Product, rng,
                cue_noise: float) -> ImageScene:
  shape = world.cue('image', product.category, rng, cue_noise)
  colour = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255))
                 for c in world_lib.COLOURS[product.colour])
  s = IMAGE_SIZE
  return ImageScene(
      shape=shape, colour=colour, colour_index=product.colour, pattern=product.pattern,
      center=(float(rng.uniform(0.35, 0.65) * s), float(rng.uniform(0.35, 0.65) * s)),
      radius=float(rng.uniform(0.18, 0.28) * s),
      background=tuple(int(v) for v in rng.integers(205, 250, 3)),
      logo=(int(rng.integers(2)), int(rng.integers(2))) if rng.random() < 0.4 else None)


def _shape_polygon(shape: str, cx: float, cy: float, r: float):
  if shape == 'square':
    r *= 0.85
    return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
  corners = {'triangle': 3, 'diamond': 4, 'hexagon': 6, 'star': 10}[shape]
  pts = []
  for k in range(corners):
    a = 2 * np.pi * k / corners - np.pi / 2
    rr = r * (0.45 if shape == 'star' and k % 2 else 1.0)
    pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
  return pts


def draw_image(scene: ImageScene) -> bytes:
  s = IMAGE_SIZE
  img = Image.new('RGB', (s, s), scene.background)
  mask = Image.new('L', (s, s), 0)
  cx, cy, r = scene.center[0], scene.center[1], scene.radius
  shape = world_lib.SHAPES[scene.shape]
  if shape == 'circle':
    ImageDraw.Draw(mask).ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
  else:
    ImageDraw.Draw(mask).polygon(_shape_polygon(shape, cx, cy, r), fill=255)
  fill = Image.new('RGB', (s, s), scene.colour)
  dark = tuple(int(c * 0.55) for c in scene.colour)
  draw = ImageDraw.Draw(fill)
  if world_lib.PATTERNS[scene.pattern] == 'stripes':
    for x in range(-s, s, 10):
      draw.line([(x, 0), (x + s, s)], fill=dark, width=4)
  elif world_lib.PATTERNS[scene.pattern] == 'dots':
    for y in range(4, s, 12):
      for x in range(4 + (y // 12 % 2) * 6, s, 12):
        draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=dark)
  img.paste(fill, mask=mask)
  if scene.logo is not None:
    x0, y0 = 4 + scene.logo[0] * (s - 36), 4 + scene.logo[1] * (s - 14)
    ImageDraw.Draw(img).rectangle([x0, y0, x0 + 32, y0 + 10], fill=(150, 150, 150))
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def image_features(world: world_lib.World, scene: ImageScene, rng) -> tuple[np.ndarray, np.ndarray]:
  """([36, 2048] float16 regions, [36, 5] float32 boxes): object regions project
  the image latent (shape, colour, pattern); the others are background noise."""
  regions, dim = release.FEATURE_SHAPES['image_regions']
  z = np.zeros(world_lib.IMAGE_LATENT, np.float32)
  z[[scene.shape, len(world_lib.SHAPES) + scene.colour_index,
     len(world_lib.SHAPES) + len(world_lib.COLOURS) + scene.pattern]] = 1.0
  num_obj = int(rng.integers(6, 16))
  feats = 0.5 * rng.standard_normal((regions, dim), dtype=np.float32)
  feats[:num_obj] += rng.uniform(0.7, 1.3, (num_obj, 1)).astype(np.float32) * (z @ world.image_proj) / np.sqrt(3.0)
  feats = np.maximum(feats, 0.0)
  s, (cx, cy), r = IMAGE_SIZE, scene.center, scene.radius
  obj = np.array([cx - r, cy - r, cx + r, cy + r], np.float32) / s
  boxes = np.zeros((regions, 5), np.float32)
  boxes[:num_obj, :4] = obj + rng.uniform(-0.06, 0.06, (num_obj, 4))
  corner = rng.uniform(0, 0.7, (regions - num_obj, 2))
  boxes[num_obj:, :4] = np.concatenate([corner, corner + rng.uniform(0.1, 0.3, corner.shape)], 1)
  boxes[:, :4] = np.clip(boxes[:, :4], 0.0, 1.0)
  boxes[:, 4] = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return feats.astype(np.float16), boxes


# ------------------------------------------------------------------ video / audio

@dataclasses.dataclass(frozen=True)
class Clip:
  """The product video and its audio track (same duration, same tempo)."""
  seconds: int                # duration of both tracks
  direction: int              # video's category cue: the disk's heading (of world_lib.DIRECTIONS)
  tempo: int                  # the product's: the disk's speed and the beat rate
  start: tuple[float, float]  # the disk's first position, px
  background: int             # luma of the background, 15-69
  brightness: int             # luma of the disk, 190-255
  pitch: int                  # audio's category cue: index into world_lib.PITCHES_HZ
  timbre: int                 # the product's: its harmonics (world_lib.TIMBRES)
  detune: float               # this listing's pitch offset, within 1%
  phase: float                # of the beat, in cycles
  noise: float                # white-noise amplitude


def clip_scene(world: world_lib.World, product: world_lib.Product, seed: int, index: int,
               cue_noise: float) -> Clip:
  rng_clip, rng_v, rng_a = (item_rng(seed, index, s) for s in ('clip', 'video', 'audio'))
  return Clip(
      seconds=int(rng_clip.integers(MIN_SECONDS, MAX_SECONDS + 1)),
      direction=world.cue('video', product.category, rng_v, cue_noise), tempo=product.tempo,
      start=(float(rng_v.uniform(0, VIDEO_SIZE)), float(rng_v.uniform(0, VIDEO_SIZE))),
      background=int(rng_v.integers(15, 70)), brightness=int(rng_v.integers(190, 256)),
      pitch=world.cue('audio', product.category, rng_a, cue_noise), timbre=product.timbre,
      detune=float(rng_a.uniform(-0.01, 0.01)), phase=float(rng_a.uniform()),
      noise=float(rng_a.uniform(0.005, 0.03)))


def video_frames(clip: Clip) -> np.ndarray:
  """uint8 [seconds * 24, 64, 64] luma: a bright disk moving in `direction`, wrapping around.

  The video is grey (colour is the image's information), so it is encoded
  straight from this luma plane with neutral chroma.
  """
  n, s = clip.seconds * VIDEO_FPS, VIDEO_SIZE
  angle = 2 * np.pi * clip.direction / world_lib.DIRECTIONS
  t = np.arange(n, dtype=np.float32) / VIDEO_FPS
  speed = SPEEDS_PX_PER_S[clip.tempo]
  cx = clip.start[0] + speed * np.cos(angle) * t
  cy = clip.start[1] - speed * np.sin(angle) * t      # image y grows downwards
  grid = np.arange(s, dtype=np.float32)
  dx = (grid[None, :] - cx[:, None] + s / 2) % s - s / 2     # [n, s] wrapped offsets
  dy = (grid[None, :] - cy[:, None] + s / 2) % s - s / 2
  # The disk (radius 6) lies within 7 pixels of its centre: test only that
  # 15 x 15 window of each frame, the rest is background.
  near = np.arange(-7, 8)
  xs = (np.floor(cx).astype(np.int64)[:, None] + near) % s    # [n, 15]
  ys = (np.floor(cy).astype(np.int64)[:, None] + near) % s
  f = np.arange(n)[:, None]
  disk = (dx * dx)[f, xs][:, None, :] + (dy * dy)[f, ys][:, :, None] <= 36.0
  out = np.full((n, s, s), np.uint8(clip.background))
  out[f[:, :, None], ys[:, :, None], xs[:, None, :]] = np.where(
      disk, np.uint8(clip.brightness), np.uint8(clip.background))
  return out


def audio_wave(clip: Clip, rng_noise) -> np.ndarray:
  """float32 [seconds * 16000]: a pulsing tone (pitch, timbre, beat rate) + noise."""
  t = np.arange(clip.seconds * AUDIO_RATE, dtype=np.float32) / AUDIO_RATE
  f0 = world_lib.PITCHES_HZ[clip.pitch] * (1.0 + clip.detune)
  harmonics = HARMONICS[world_lib.TIMBRES[clip.timbre]]
  tone = sum(np.float32(a) * np.sin(np.float32(2 * np.pi * f0 * (h + 1)) * t)
             for h, a in enumerate(harmonics) if a)
  beat = 0.5 - 0.5 * np.cos(np.float32(2 * np.pi * BEATS_PER_S[clip.tempo]) * t
                            + np.float32(2 * np.pi * clip.phase))
  wave = np.float32(0.35 / sum(harmonics)) * tone * beat
  wave += np.float32(clip.noise) * rng_noise.standard_normal(t.shape, dtype=np.float32)
  return np.clip(wave, -1.0, 1.0)


def video_features(world: world_lib.World, clip: Clip, rng) -> np.ndarray:
  """float16 [12, 1024], one S3D-like row per second; rows past the video are 0."""
  rows, dim = release.FEATURE_SHAPES['video_s3d']
  z = np.zeros(world_lib.VIDEO_LATENT, np.float32)
  z[[clip.direction, world_lib.DIRECTIONS + clip.tempo]] = 1.0
  out = np.zeros((rows, dim), np.float32)
  n = min(clip.seconds, rows)
  out[:n] = np.maximum((z @ world.video_proj) / np.sqrt(2.0) + 0.5 * rng.standard_normal((n, dim)), 0.0)
  return out.astype(np.float16)


def log_mel(wave: np.ndarray) -> np.ndarray:
  """float16 [80, 751]: the builder's own log-mel (data_prep.decode.log_mel) of the
  clean audio track, so the `features` and `raw` configs agree on the convention
  (columns past the track's end are 0)."""
  mel, _ = decode.log_mel(wave)
  return mel.astype(np.float16)


# ------------------------------------------------------------------ encoders

def encode_h264(width: int, height: int, frames: Iterable[av.VideoFrame]) -> bytes:
  """MP4 of yuv420p `frames` (numbered here): 24 fps, single-threaded x264, bit-exact
  muxing, so the same pictures give the same bytes (mini's and realistic's videos)."""
  buf = io.BytesIO()
  with av.open(buf, 'w', format='mp4', options={'fflags': '+bitexact'}) as out:
    stream = out.add_stream('libx264', rate=VIDEO_FPS, options={
        'preset': 'ultrafast', 'crf': '26', 'threads': '1', 'x264-params': 'threads=1'})
    stream.width, stream.height = width, height
    stream.pix_fmt = 'yuv420p'
    stream.codec_context.thread_count = 1
    for t, frame in enumerate(frames):
      frame.pts = t
      out.mux(stream.encode(frame))
    out.mux(stream.encode())
  return buf.getvalue()


def encode_mp4(frames: np.ndarray) -> bytes:
  """H.264 in MP4 from luma frames [T, H, W] (grey: chroma 128)."""
  height, width = frames.shape[1], frames.shape[2]

  def pictures():
    # One frame, refilled in place: x264 copies each picture on encode.
    frame = av.VideoFrame(width, height, 'yuv420p')
    for chroma in frame.planes[1:]:
      chroma.update(np.full(chroma.buffer_size, 128, np.uint8))
    luma = frame.planes[0]
    pad = ((0, 0), (0, luma.line_size - width))
    for image in frames:
      luma.update(np.ascontiguousarray(np.pad(image, pad)) if pad[1][1] else image)
      yield frame

  return encode_h264(width, height, pictures())


def encode_mp3(wave: np.ndarray) -> bytes:
  """MP3 (libmp3lame), 16 kHz mono, 32 kbit/s, bit-exact muxing."""
  buf = io.BytesIO()
  with av.open(buf, 'w', format='mp3', options={'fflags': '+bitexact'}) as out:
    stream = out.add_stream('libmp3lame', rate=AUDIO_RATE, options={'b': '32k', 'compression_level': '9'})
    stream.layout = 'mono'
    stream.codec_context.thread_count = 1
    pcm = (wave * 32767.0).astype(np.int16)[None, :]
    frame = av.AudioFrame.from_ndarray(pcm, format='s16', layout='mono')
    frame.sample_rate, frame.pts = AUDIO_RATE, 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode())
  return buf.getvalue()
