"""Read a BS-RoFormer or Mel-Band RoFormer training config (YAML) safely, without torch.

The configs are the ones UVR, python-audio-separator and ZFTurbo's Music-Source-Separation-Training
ship beside their checkpoints: ``model:`` (the network's hyper-parameters), ``audio:`` (chunk
size, sample rate), ``training:`` (instrument names), ``inference:`` (overlap). They come from the
internet, so they are untrusted: :class:`ConfigLoader` is PyYAML's ``SafeLoader`` plus one tag,
``!!python/tuple`` (the published viperx configs write ``freqs_per_bands: !!python/tuple``), read
as a list. Every other ``python/`` tag is refused by name.

Which network a config describes is read from its keys, never from a file name: ``freqs_per_bands``
is BS-RoFormer (Lu et al. 2023), ``num_bands`` Mel-Band RoFormer (Wang et al. 2023). The mel band
layout is computed here with numpy exactly as ``librosa.filters.mel`` draws it (Slaney scale and
norm, librosa's defaults), so neither librosa nor torch is needed to describe the network.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import yaml

from ..errors import ModelError
from ..separation.models import canonical_stem
from ..preset.safeyaml import check_size, load_yaml


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``!!python/tuple`` as a list and refuses every other python tag."""


def whole_number(source, where: dict, key: str, default=None, *, section: str = "model", low: int = 1) -> int:
    """``where[key]`` as a whole number >= ``low``; one line naming ``source`` and ``section.key``
    when it is missing or is not one (the RoFormer and SCNet config parsers share it)."""
    value = where.get(key, default)
    if value is None:
        raise ModelError(f"{source}: {section}.{key} is missing; the config must give it")
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ModelError(f"{source}: {section}.{key} must be a whole number >= {low}, got {value!r}")
    return value

def _tuple(loader: ConfigLoader, node):
    return loader.construct_sequence(node, deep=True)


def _refuse(loader: ConfigLoader, suffix, node):
    raise yaml.constructor.ConstructorError(
        None, None, f"the tag '!!python/{suffix}' would run code or build Python objects; only !!python/tuple "
                    "is accepted", node.start_mark)


ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", _tuple)
ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse)


def read_config(path) -> dict:
    """The config at ``path`` as plain data (dicts, lists, numbers, strings)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path}: no such config file; pass the model's YAML config with --config CONFIG.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the config ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        # A SafeLoader subclass (see ConfigLoader); a key given twice is refused, naming both lines.
        data = load_yaml(text, source=str(path), error=ModelError, loader=ConfigLoader)
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not a usable config: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ModelError(f"{path}: the config is nested too deeply") from None
    check_size(data, source=str(path), what="config", error=ModelError)
    if not isinstance(data, dict):
        raise ModelError(f"{path}: a RoFormer config is a YAML mapping with model:, audio: and training:, "
                         f"got {type(data).__name__}")
    return data


@dataclasses.dataclass(frozen=True)
class RoformerConfig:
    """What a config says about the network and how to run it. Units: samples, Hz, STFT bins/frames."""

    architecture: str  # "bs_roformer" | "mel_band_roformer"
    dim: int
    depth: int
    audio_channels: int
    num_stems: int
    time_transformer_depth: int
    freq_transformer_depth: int
    linear_transformer_depth: int
    heads: int
    dim_head: int
    mask_estimator_depth: int
    mlp_expansion_factor: int
    skip_connection: bool
    n_fft: int
    hop: int
    win_length: int
    stft_normalized: bool
    sample_rate: int
    chunk_size: int
    num_overlap: int
    outputs: tuple[str, ...]  # canonical names of the model's outputs, in order
    residual: str | None  # mix minus the outputs, or None
    freqs_per_bands: tuple[int, ...] = ()  # BS-RoFormer
    num_bands: int = 0  # Mel-Band RoFormer

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def dim_t(self) -> int:
        return self.chunk_size // self.hop + 1

    @property
    def stems(self) -> tuple[str, ...]:
        return self.outputs + ((self.residual,) if self.residual else ())


def _describe(data: dict) -> str:
    """What a non-RoFormer config looks like, for the error message."""
    model = data.get("model")
    if isinstance(model, str):
        return f"model: {model}"
    if isinstance(model, dict):
        keys = sorted(str(k) for k in model)
        return "model keys " + ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    return "top-level keys " + ", ".join(sorted(str(k) for k in data)[:8])


def parse_config(data: dict, *, source: str) -> RoformerConfig:
    """Validate a config's data (from :func:`read_config`) into a :class:`RoformerConfig`."""
    model = data.get("model")
    if not isinstance(model, dict) or not ({"freqs_per_bands", "num_bands"} & set(model)):
        raise ModelError(f"{source}: not a BS-RoFormer or Mel-Band RoFormer config ({_describe(data)}); "
                         "stembridge imports RoFormer checkpoints: model: needs freqs_per_bands (BS-RoFormer) "
                         "or num_bands (Mel-Band RoFormer)")
    if "freqs_per_bands" in model and "num_bands" in model:
        raise ModelError(f"{source}: model: has both freqs_per_bands (BS-RoFormer) and num_bands (Mel-Band "
                         "RoFormer); keep the one the checkpoint was trained with")
    audio = data.get("audio") or {}
    training = data.get("training") or {}
    inference = data.get("inference") or {}
    for section, value in (("audio", audio), ("training", training), ("inference", inference)):
        if not isinstance(value, dict):
            raise ModelError(f"{source}: {section}: must be a mapping, got {type(value).__name__}")

    whole = functools.partial(whole_number, source)

    def flag(key: str, default: bool) -> bool:
        value = model.get(key, default)
        if not isinstance(value, bool):
            raise ModelError(f"{source}: model.{key} must be true or false, got {value!r}")
        return value

    bs = "freqs_per_bands" in model
    n_fft = whole(model, "stft_n_fft", 2048)
    hop = whole(model, "stft_hop_length", 512)
    win_length = whole(model, "stft_win_length", 2048)
    if win_length > n_fft:
        raise ModelError(f"{source}: model.stft_win_length {win_length} is longer than stft_n_fft {n_fft}")
    bins = n_fft // 2 + 1
    freqs_per_bands: tuple[int, ...] = ()
    num_bands = 0
    if bs:
        raw = model["freqs_per_bands"]
        if (not isinstance(raw, list) or len(raw) < 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw)):
            raise ModelError(f"{source}: model.freqs_per_bands must be a list of at least 2 positive whole numbers")
        freqs_per_bands = tuple(raw)
        if sum(freqs_per_bands) != bins:
            raise ModelError(f"{source}: model.freqs_per_bands adds up to {sum(freqs_per_bands)} bins, but "
                             f"stft_n_fft {n_fft} gives {bins}; the config is inconsistent")
    else:
        num_bands = whole(model, "num_bands", section="model", low=2)
    sample_rate = whole(audio, "sample_rate", model.get("sample_rate", 44100), section="audio")
    if not bs:  # Mel-Band RoFormer draws its bands for model.sample_rate: the audio must be at that rate
        mel_rate = whole(model, "sample_rate", sample_rate)
        if mel_rate != sample_rate:
            raise ModelError(f"{source}: model.sample_rate {mel_rate} (the mel bands) differs from audio.sample_rate "
                             f"{sample_rate}; the config is inconsistent")
    chunk_size = whole(audio, "chunk_size", section="audio")
    num_overlap = whole(inference, "num_overlap", 2, section="inference")
    stereo = flag("stereo", False)
    num_stems = whole(model, "num_stems", 1)
    outputs, residual = stems_of(training, num_stems, source)
    return RoformerConfig(
        architecture="bs_roformer" if bs else "mel_band_roformer",
        dim=whole(model, "dim"), depth=whole(model, "depth"), audio_channels=2 if stereo else 1,
        num_stems=num_stems,
        time_transformer_depth=whole(model, "time_transformer_depth", 2),
        freq_transformer_depth=whole(model, "freq_transformer_depth", 2),
        linear_transformer_depth=whole(model, "linear_transformer_depth", 0, low=0),
        heads=whole(model, "heads", 8), dim_head=whole(model, "dim_head", 64),
        # The two codes differ in this default: BS-RoFormer's mask MLPs are 2 deep, Mel-Band's 1.
        mask_estimator_depth=whole(model, "mask_estimator_depth", 2 if bs else 1),
        mlp_expansion_factor=whole(model, "mlp_expansion_factor", 4),
        skip_connection=flag("skip_connection", False),
        n_fft=n_fft, hop=hop, win_length=win_length, stft_normalized=flag("stft_normalized", False),
        sample_rate=sample_rate, chunk_size=chunk_size, num_overlap=num_overlap,
        outputs=outputs, residual=residual, freqs_per_bands=freqs_per_bands, num_bands=num_bands,
    )


def stems_of(training: dict, num_stems: int, source: str, *, count: str = "num_stems") -> tuple[tuple[str, ...], str | None]:
    """The model's outputs and the residual stem, from ``training.instruments``/``target_instrument``
    (MSST's convention, shared by the model types it trains); ``count`` names the config's key for
    the number of outputs, for the messages."""
    instruments = training.get("instruments")
    if not isinstance(instruments, list) or not instruments or not all(isinstance(i, str) for i in instruments):
        raise ModelError(f"{source}: training.instruments must be a list of stem names, got {instruments!r}")
    names = [canonical_stem(i) for i in instruments]
    if len(set(names)) != len(names):
        raise ModelError(f"{source}: training.instruments names a stem twice: {instruments}")
    target = training.get("target_instrument")
    if target is not None:
        if num_stems != 1 or not isinstance(target, str) or canonical_stem(target) not in names or len(names) != 2:
            raise ModelError(f"{source}: target_instrument {target!r} with {count} {num_stems} and instruments "
                             f"{instruments}: a target model predicts one of two instruments ({count} 1); "
                             "this combination is not supported")
        primary = canonical_stem(target)
        other = next(n for n in names if n != primary)
        # ZFTurbo's "other" beside vocals is everything but the vocals: the instrumental.
        residual = "instrumental" if primary == "vocals" and other == "other" else other
        return (primary,), residual
    if num_stems != len(names):
        raise ModelError(f"{source}: {count} {num_stems} but training.instruments lists {len(names)} "
                         f"({', '.join(instruments)}) and no target_instrument; the config is inconsistent")
    return tuple(names), None


# --- Mel-Band RoFormer's bands, as librosa.filters.mel(sr, n_fft, n_mels) draws them -------------

def _hz_to_mel(hz):
    """Slaney's mel scale (librosa's default, htk=False): linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-300) / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filters(*, sample_rate: int, n_fft: int, num_bands: int) -> np.ndarray:
    """librosa's ``filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=num_bands)`` (fmin 0, fmax sr/2,
    Slaney scale and area norm), float32 ``[num_bands, n_fft//2+1]``: the same weights, so the same
    zeros, which is all :func:`mel_bands` uses."""
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), num_bands + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((num_bands, n_fft // 2 + 1), dtype=np.float32)
    for i in range(num_bands):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:num_bands + 2] - mel_f[:num_bands]))[:, np.newaxis]
    return weights


def mel_bands(*, sample_rate: int, n_fft: int, num_bands: int, source: str = "config") -> np.ndarray:
    """Which STFT bins each mel band covers, bool ``[num_bands, n_fft//2+1]``, as Mel-Band RoFormer
    builds it: the filters' non-zero weights, with the first bin forced into the first band and the
    last bin into the last (the training code does both; the last weight can round to 0)."""
    covered = mel_filters(sample_rate=sample_rate, n_fft=n_fft, num_bands=num_bands) > 0
    covered[0, 0] = True
    covered[-1, -1] = True
    if not covered.any(axis=0).all():
        missing = int(np.flatnonzero(~covered.any(axis=0))[0])
        raise ModelError(f"{source}: with num_bands {num_bands} and stft_n_fft {n_fft} the mel bands leave STFT bin "
                         f"{missing} uncovered; Mel-Band RoFormer needs every bin in a band (fewer bands)")
    return covered
