"""Synthetic songs and the model folders both tools need, built into the cache folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100
#: Peak of the synthetic songs: under audio-separator's normalisation threshold (0.9), so it
#: leaves the input alone.
PEAK = 0.5
#: The name audio-separator knows the model by (it only runs files listed in download_checks.json).
AUDIOSEP_MODEL_NAME = "UVR-MDX-NET-Inst_HQ_3.onnx"


def song(path: Path, minutes: float, *, seed: int = 0, subtype: str = "PCM_24") -> Path:
    """A stereo 44.1 kHz song of tones (a chord that changes every 2 s, with vibrato, different in
    each channel) and noise bursts (a 'drum' every half second), peak about :data:`PEAK` (never over 0.85); written block by
    block so a 16-minute song never sits in memory."""
    if path.exists() and sf.info(str(path)).frames == round(minutes * 60 * RATE) and path.stat().st_mtime > Path(__file__).stat().st_mtime:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    total = round(minutes * 60 * RATE)
    block = 10 * RATE
    phases = np.zeros(5)
    rng = np.random.default_rng(seed)
    # Band-limit the noise to 40 Hz - 16 kHz (4th-order Butterworth, state carried across blocks):
    # real music has next to nothing below, and the MDX pipeline zeroes the lowest 3 bins
    # (< 21.5 Hz at n_fft 6144) and cuts the top bin (22.05 kHz) inside each chunk; content there
    # would otherwise dominate the tool-to-tool difference with a trivial model.
    from scipy.signal import butter, sosfilt

    sos = butter(4, [40.0, 16000.0], btype="bandpass", fs=RATE, output="sos")
    zi = np.zeros((sos.shape[0], 2, 2))
    # ...and the whole mix high-passed too: the bursts' envelopes would spread the noise below 40 Hz.
    hp = butter(4, 40.0, btype="highpass", fs=RATE, output="sos")
    zi_hp = np.zeros((hp.shape[0], 2, 2))
    partial = path.with_suffix(".partial.wav")
    with sf.SoundFile(str(partial), "w", samplerate=RATE, channels=2, subtype=subtype) as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / RATE
            out = np.zeros((n, 2))
            chord = (np.floor(t / 2.0) % 4).astype(int)
            roots = np.array([110.0, 146.8, 164.8, 130.8])[chord]
            for k, ratio in enumerate((1.0, 1.25, 1.5, 2.0, 3.0)):
                f0 = roots * ratio * (1 + 0.003 * np.sin(2 * np.pi * 5.5 * t))
                phase = phases[k] + 2 * np.pi * np.cumsum(f0) / RATE  # continuous across blocks
                phases[k] = phase[-1]
                out[:, 0] += np.sin(phase) / (k + 1)
                out[:, 1] += np.sin(phase + 0.3 * k) / (k + 1.5)
            # A 'drum' every half second: 2 ms attack, 20 ms decay.
            since = t % 0.5
            env = np.minimum(since / 0.002, 1.0) * np.exp(-since / 0.02) * (since < 0.06)
            noise, zi = sosfilt(sos, rng.standard_normal((n, 2)), axis=0, zi=zi)
            out += 1.5 * noise * env[:, None] + 0.05 * noise
            out, zi_hp = sosfilt(hp, out * (PEAK / 6.0), axis=0, zi=zi_hp)
            f.write(out.clip(-0.85, 0.85).astype(np.float32))
    os.replace(partial, path)
    return path


def uvr_hash(path: Path) -> str:
    """UVR's (and audio-separator's) model key: MD5 of the last 10,240,000 bytes, or of the whole file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size > 10_000 * 1024:
            handle.seek(size - 10_000 * 1024)
        return hashlib.md5(handle.read()).hexdigest()


def audiosep_folder(folder: Path, model: Path, *, compensate: float = 1.0) -> Path:
    """A model folder audio-separator accepts offline: the model under a known UVR name, the three
    JSON files it would otherwise download, and our model's parameters keyed by its hash."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / AUDIOSEP_MODEL_NAME
    if target.exists() or target.is_symlink():
        target.unlink()
    os.link(model, target) if model.stat().st_dev == folder.stat().st_dev else target.symlink_to(model)
    keys = ["vr_download_list", "mdx_download_list", "demucs_download_list", "mdx23c_download_list",
            "mdx_download_vip_list", "mdx23c_download_vip_list", "roformer_download_list"]
    checks = {k: {} for k in keys}
    checks["mdx_download_list"] = {"MDX-Net Model: UVR-MDX-NET Inst HQ 3": AUDIOSEP_MODEL_NAME}
    (folder / "download_checks.json").write_text(json.dumps(checks, indent=1))
    params = {"compensate": compensate, "mdx_dim_f_set": 3072, "mdx_dim_t_set": 8, "mdx_n_fft_scale_set": 6144,
              "primary_stem": "Instrumental"}
    (folder / "mdx_model_data.json").write_text(json.dumps({uvr_hash(target): params}, indent=1))
    (folder / "vr_model_data.json").write_text("{}")
    return folder
