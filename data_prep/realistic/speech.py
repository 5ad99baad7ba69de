"""Mandarin speech by espeak-ng: the listing's narrator reads the product's brand
and name. The narrator (voice variant, speed, pitch, word gap), the lead-in
silence, the loudness and the room noise are listing-level.

The voice is `cmn-latn-pinyin`, not `cmn`: espeak-ng 1.51's `cmn` turns each
character into pinyin with a tone digit and then reads that in English ("hao
three"; espeak-ng issues #1028, #1236); cmn-latn-pinyin reads it as Mandarin.
"""
from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
from scipy import signal

from data_prep.realistic import sources

AUDIO_RATE = 16000
ESPEAK_RATE = 22050            # espeak-ng's output rate
VARIANTS = ('m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'f1', 'f2', 'f3', 'f4', 'f5')
MIN_SECONDS, MAX_SECONDS = 3, 12
VOICE = 'cmn-latn-pinyin'


@dataclasses.dataclass(frozen=True)
class Narrator:
  variant: str
  speed: int        # words per minute
  pitch: int        # 0-99
  gap: int          # extra pause between words, 10 ms units
  lead_in: float    # seconds of room noise before the speech
  level: float      # peak amplitude of the speech
  noise: float      # std of the room noise


def narrator(rng) -> Narrator:
  return Narrator(variant=VARIANTS[int(rng.integers(len(VARIANTS)))], speed=int(rng.integers(140, 200)),
                  pitch=int(rng.integers(30, 71)), gap=int(rng.integers(0, 3)),
                  lead_in=float(rng.uniform(0.1, 0.8)), level=float(rng.uniform(0.4, 0.9)),
                  noise=float(rng.uniform(0.001, 0.01)))


def synthesize(script: str, voice: Narrator) -> np.ndarray:
  """float32 speech at 16 kHz (espeak-ng's 22.05 kHz output resampled)."""
  try:
    result = subprocess.run(
        [sources.ESPEAK, '-v', f'{VOICE}+{voice.variant}', '-s', str(voice.speed), '-p', str(voice.pitch),
         '-g', str(voice.gap), '--stdout', script], capture_output=True, check=True, timeout=60)
  except FileNotFoundError:
    raise sources.MissingSource(f'{sources.ESPEAK} not found: install with `apt-get install -y espeak-ng`') from None
  wav = result.stdout
  start = wav.find(b'data')
  if not wav.startswith(b'RIFF') or start < 0:
    raise RuntimeError(f'{sources.ESPEAK} wrote no WAV for {script!r}: {result.stderr[-200:]!r}')
  pcm = np.frombuffer(wav[start + 8:len(wav) - (len(wav) - start - 8) % 2], np.int16)
  speech = signal.resample_poly(pcm.astype(np.float32) / 32768.0, 320, 441).astype(np.float32)
  nonzero = np.flatnonzero(np.abs(speech) > 1e-3)
  return speech[nonzero[0]:nonzero[-1] + 1] if nonzero.size else speech


def seconds_for(speech: np.ndarray, voice: Narrator) -> int:
  """The clip length (video and audio): the speech plus ~0.5 s, 3-12 s."""
  need = voice.lead_in + speech.size / AUDIO_RATE + 0.5
  return int(np.clip(np.ceil(need), MIN_SECONDS, MAX_SECONDS))


def track(speech: np.ndarray, voice: Narrator, seconds: int, rng_noise) -> np.ndarray:
  """float32 [seconds * 16000]: room noise with the speech after the lead-in."""
  out = np.float32(voice.noise) * rng_noise.standard_normal(seconds * AUDIO_RATE, dtype=np.float32)
  start = int(voice.lead_in * AUDIO_RATE)
  part = speech[:max(0, out.size - start)]
  peak = float(np.abs(part).max()) if part.size else 0.0
  if peak > 0:
    out[start:start + part.size] += np.float32(voice.level / peak) * part
  return np.clip(out, -1.0, 1.0)
