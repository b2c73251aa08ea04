"""UVR VR models for the tests: random-weight state dicts built with python-audio-separator's own
classes (0.47.1, from its wheel), and the reference's separation of a song with them.

:func:`reference_separate` follows ``VRSeparator.loading_mix``, ``inference_vr`` and
``spec_to_wav`` (``audio_separator/separator/architectures/vr_separator.py``) step by step with
the reference's own ``spec_utils`` functions and network (that module itself imports pydub and
the whole tool, so it is not loaded): the bands resampled with ``librosa.resample(res_type=...)``,
``wave_to_spectrogram``, ``combine_spectrograms``, ``make_padding``, the peak normalisation, the
network's ``predict_mask`` window by window (batch 1), ``adjust_aggr``, and
``cmb_spectrogram_to_wave``. ``spec_utils.wav_resolution`` (the way back's resampler) is set to
``polyphase``, what the reference uses on Apple Silicon (on Linux it is libsamplerate's
``sinc_fastest``).
"""

from __future__ import annotations

import os

import numpy as np

from tests.reference_wheels import module

AS = ("audio-separator", "0.47.1")
NON_ACCOM = ("Vocals", "Other", "Bass", "Drums", "Guitar", "Piano", "Synthesizer", "Strings", "Woodwinds", "Brass",
             "Wind Inst")


def ref(name: str):
    return module(*AS, f"audio_separator.separator.uvr_lib_v5.{name}")


def model_params(name: str):
    init = ref("vr_network.model_param_init")
    return init.ModelParameters(os.path.join(os.path.dirname(init.__file__), "modelparams", f"{name}.json"))


def randomized(net, seed: int = 0) -> dict:
    """``net``'s state dict with every tensor drawn from a seeded generator (BatchNorm statistics
    included, so that a wrongly wired normalisation shows)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in net.state_dict().items():
        if not value.is_floating_point():
            out[key] = value
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif key.endswith("running_mean") or key.endswith("bias"):
            out[key] = 0.1 * torch.randn(value.shape, generator=g)
        elif value.dim() >= 2:
            out[key] = torch.randn(value.shape, generator=g) / value[0].numel() ** 0.5
        else:
            out[key] = 1 + 0.1 * torch.randn(value.shape, generator=g)
    # The v5 ASPP registers one module as conv6 and conv7: keep them equal, as a trained file has them.
    for key in list(out):
        if ".conv7." in key:
            out[key] = out[key.replace(".conv7.", ".conv6.")]
    return out


def reference_net(params: str, *, v51: bool, size: int = 31191, nout: int = 32, nout_lstm: int = 128, seed: int = 0):
    """The reference's network for ``params`` with random weights, in eval mode."""
    mp = model_params(params)
    bins = mp.param["bins"]
    if v51:
        net = ref("vr_network.nets_new").CascadedNet(bins * 2, size, nout=nout, nout_lstm=nout_lstm)
    else:
        net = ref("vr_network.nets").determine_model_capacity(bins * 2, size)
    net.load_state_dict(randomized(net, seed))
    return net.eval()


def reference_separate(x: np.ndarray, net, params: str, *, v51: bool, primary: str = "Vocals", window: int = 512,
                       aggression: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The reference's primary and secondary stems of ``x`` ((2, n) float32 at the set's rate)."""
    import librosa
    import torch

    su = ref("spec_utils")
    su.wav_resolution = "polyphase"
    mp = model_params(params)
    n_bands = len(mp.param["band"])
    waves, specs = {}, {}
    for d in range(n_bands, 0, -1):
        bp = mp.param["band"][d]
        if d == n_bands:
            waves[d] = x
        else:
            waves[d] = librosa.resample(waves[d + 1], orig_sr=mp.param["band"][d + 1]["sr"], target_sr=bp["sr"],
                                        res_type=bp["res_type"])
        specs[d] = su.wave_to_spectrogram(waves[d], bp["hl"], bp["n_fft"], mp, band=d, is_v51_model=v51)
    spec = su.combine_spectrograms(specs, mp, is_v51_model=v51)
    mag, phase = su.preprocess(spec)
    n_frame = mag.shape[2]
    pad_l, pad_r, roi = su.make_padding(n_frame, window, net.offset)
    padded = np.pad(mag, ((0, 0), (0, 0), (pad_l, pad_r)), mode="constant")
    padded /= padded.max()
    patches = (padded.shape[2] - 2 * net.offset) // roi
    masks = []
    with torch.no_grad():
        for i in range(patches):
            window_in = torch.from_numpy(np.asarray([padded[:, :, i * roi:i * roi + window]]))
            masks.append(np.concatenate(net.predict_mask(window_in).numpy(), axis=2))
    mask = np.concatenate(masks, axis=2)[:, :, :n_frame]
    aggressiveness = {"value": aggression / 100, "split_bin": mp.param["band"][1]["crop_stop"],
                      "aggr_correction": mp.param.get("aggr_correction")}
    mask = su.adjust_aggr(mask, primary in NON_ACCOM, aggressiveness)
    y = mask * mag * np.exp(1.0j * phase)
    v = (1 - mask) * mag * np.exp(1.0j * phase)
    return (su.cmb_spectrogram_to_wave(y, mp, is_v51_model=v51), su.cmb_spectrogram_to_wave(v, mp, is_v51_model=v51))


def save_state(net, path) -> None:
    import torch

    torch.save(net.state_dict(), path)
