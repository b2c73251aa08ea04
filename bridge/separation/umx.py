"""Open-Unmix separators: umxhq, umxl, umxse and other openunmix models, exported to ONNX.

Open-Unmix (Stöter et al., JOSS 2019) estimates each target's magnitude spectrogram from the
mixture's with one network per target (``stembridge models import`` exports them together, without
the STFT: :mod:`bridge.importers.umx`), and then separates the mixture's complex STFT with the
multichannel Wiener filter (Nugraha, Liutkus, Vincent, IEEE/ACM TASLP 2016), as openunmix's
``Separator`` does by default. Per chunk of ``chunk_size`` samples at the card's rate:

1. centred STFT of each channel (periodic Hann of ``n_fft``, ``hop``, reflect padding: openunmix's
   ``TorchSTFT``, i.e. ``torch.stft``'s conventions) and its magnitude; for a mono model
   (``audio_channels: 1``, umxse) the mean of the two channels' magnitudes;
2. the model gives each target's magnitude estimate ``v_j``, every bin;
3. the filter, in windows of ``wiener_win_len`` frames (openunmix's default 300, 7 s at 44.1 kHz),
   with openunmix's settings: first estimates ``v_j`` with the mixture's phase (``softmask:
   false``) or the ratio mask ``v_j / sum v`` times the mixture (``softmask: true``); with a
   ``residual`` stem, one more source, the mixture minus the others' first estimates; then
   ``niter`` EM iterations (``norbert.expectation_maximization``, the algorithm openunmix's
   ``filtering.py`` ports to torch; eps 1e-10 and the ``max(1, max|x| / 10)`` scaling as there);
   ``niter: 0`` keeps the first estimates;
4. inverse STFT of each stem.

The ``residual`` stem, when the card has one, is filtered as a source (so that the others are
as openunmix gives them) but not returned: the runner sets it to the mix minus the other stems,
so the stems sum to the mix exactly. Without it (openunmix's default for umxhq and umxl) the
stems are the filter's outputs, which sum to the mix only up to the filter's regularisation.

Chunking
--------
openunmix runs the bidirectional LSTM over the whole track (each frame's estimate depends on the
whole song, and memory grows with it) and the filter in windows of ``wiener_win_len`` frames
counted from the song's first frame, each window with its own spatial covariances. Here the song
goes through in chunks of ``chunk_size`` samples (the importer writes six windows, 41.8 s at
44.1 kHz); one window (7 s) at each chunk edge is dropped and the kept parts (four windows) abut
(default overlap 0). Chunks start a whole number of windows before the song's first sample, so
the kept frames are filtered in the same windows as openunmix's whole-track run, with the same
statistics; what differs is only the LSTM's context, which here reaches at least 7 s to either
side of every kept frame. Measured against the same model run on the whole song at once
(``tests/benchmarks/umx_chunks.py``; README, "Open-Unmix"). ``--overlap`` still cross-fades
chunks, at the price of windows that no longer line up.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .families import Family, Found, register, torch_checkpoint
from .models import ModelCard, verify_file, whole
from .runtime import Runner, default_threads, open_session, static_dims
from .spectral import Stft

#: openunmix's regularisation of the filter (``filtering.wiener``'s eps).
EPS = 1e-10
#: openunmix ``Separator``'s defaults (``utils.load_separator``, the ``umx`` CLI).
DEFAULTS = {"niter": 1, "softmask": False, "wiener_win_len": 300}
#: Chunks the importer writes, in filter windows: one window trimmed at each edge, four kept.
CHUNK_WINDOWS = 6


def settings(card: ModelCard) -> dict:
    """The card's filter settings (``umx:``), openunmix's defaults where it says nothing."""
    return {**DEFAULTS, **(card.umx or {})}


def window_frames(card: ModelCard) -> int:
    """Frames per filter window: ``wiener_win_len``, or openunmix's 300 where it is null (whole track)."""
    return settings(card)["wiener_win_len"] or DEFAULTS["wiener_win_len"]


def trim_samples(card: ModelCard) -> int:
    """Samples dropped at each chunk edge: one filter window (300 frames, 7 s at 44.1 kHz), at most a
    third of a chunk, in whole frames."""
    return min(window_frames(card) * card.hop, (card.chunk_size // 3) // card.hop * card.hop)


class UmxEngine:
    """The model-specific part of an Open-Unmix separator (see :class:`~.runner.Engine`)."""

    def __init__(self, card: ModelCard, *, threads: int | None = None, batch_size: int = 1, device=None):
        path = verify_file(card)
        session = open_session(path, threads=threads, device=device)
        self.targets = tuple(s for s in card.stems if s != card.residual)
        bins, channels = card.n_fft // 2 + 1, card.audio_channels
        inputs, outputs = session.get_inputs(), session.get_outputs()
        says = (f"its card ({card.source}) says input [batch, audio_channels={channels}, n_fft/2+1={bins}, frames] and "
                f"output [batch, targets={len(self.targets)}, {channels}, {bins}, frames]")
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path}: an umx model has one input and one output, this one has "
                             f"{[i.name for i in inputs]} and {[o.name for o in outputs]}; {says}")
        for kind, node, expected in (("input", inputs[0], [None, channels, bins, None]),
                                     ("output", outputs[0], [None, len(self.targets), channels, bins, None])):
            dims = static_dims(node.shape)
            if len(dims) != len(expected) or any(d is not None and e is not None and d != e
                                                 for d, e in zip(dims, expected)):
                raise ModelError(f"{path}: the model's {kind} shape is {node.shape}, but {says}; "
                                 "fix the card (n_fft, audio_channels, stems, residual) to match the model")
        self.card = card
        self.path = path
        self.runner = Runner(session, max_batch=batch_size)
        self.stft = Stft(card.n_fft, card.hop, workers=threads or default_threads())
        self.sample_rate = card.sample_rate
        self.chunk = card.chunk_size
        self.trim = trim_samples(card)
        self.stems = card.stems
        self.residual_stem = card.residual
        self.pad = "reflect"
        self.filter = settings(card)
        self.options = dict(self.filter)

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """``(batch, 2, chunk_size)`` float32 -> ``{stem: (batch, 2, chunk_size)}``, residual excluded."""
        spec = self.stft.forward(chunks)  # (b, 2, bins, frames) complex64
        magnitude = np.abs(spec)
        if self.card.audio_channels == 1:
            magnitude = magnitude.mean(axis=1, keepdims=True)
        estimates = next(iter(self.runner(np.ascontiguousarray(magnitude)).values()))
        expected = (spec.shape[0], len(self.targets), self.card.audio_channels) + spec.shape[2:]
        if estimates.shape != expected:
            raise ModelError(f"{self.path}: the model returned shape {list(estimates.shape)}, expected {list(expected)} "
                             f"({len(self.targets)} targets: {', '.join(self.targets)}); fix stems/residual in {self.card.source}")
        separated = np.stack([self.separate(estimates[b], spec[b]) for b in range(spec.shape[0])])
        audio = self.stft.inverse(separated, self.chunk)  # (b, targets, 2, chunk)
        return {stem: audio[:, i] for i, stem in enumerate(self.targets)}

    def separate(self, estimates: np.ndarray, mix: np.ndarray) -> np.ndarray:
        """The filter of one chunk: ``estimates`` (targets, channels, bins, frames) magnitudes, ``mix``
        (2, bins, frames) complex -> (targets, 2, bins, frames) complex64, the targets' STFTs."""
        import norbert

        niter, softmask, window = self.filter["niter"], self.filter["softmask"], self.filter["wiener_win_len"]
        frames = mix.shape[-1]
        window = window or frames
        out = np.empty((len(self.targets), 2, mix.shape[1], frames), np.complex64)
        for start in range(0, frames, window):
            part = slice(start, min(frames, start + window))
            # norbert's layout, (frames, bins, channels[, sources]); double precision, as its docs ask.
            x = np.transpose(mix[:, :, part], (2, 1, 0)).astype(np.complex128)
            v = np.transpose(estimates[..., part], (3, 2, 1, 0)).astype(np.float64)  # channels broadcast if mono
            if softmask:
                y = x[..., None] * (v / (EPS + v.sum(axis=-1, keepdims=True)))
            else:
                y = v * np.exp(1j * np.angle(x))[..., None]
            y = np.broadcast_to(y, x.shape + (v.shape[-1],))
            if self.residual_stem is not None:
                y = np.concatenate([y, (x - y.sum(axis=-1))[..., None]], axis=-1)
            if niter:
                scale = max(1.0, float(np.abs(x).max()) / 10.0)
                y = norbert.expectation_maximization(y / scale, x / scale, niter, eps=EPS)[0] * scale
            out[..., part] = np.transpose(y[..., : len(self.targets)], (3, 2, 1, 0))
        return out


# --- the family ----------------------------------------------------------------------------------

def _prepare(data: dict, fields: dict, source: str) -> None:
    if "residual" not in data:
        raise ModelError(f"{source}: an umx card needs 'residual': the stem openunmix adds as the mix minus the "
                         "targets (residual=True), or null")
    options = data.get("umx")
    if options is None:
        return
    if not isinstance(options, dict):
        raise ModelError(f"{source}: umx must be a mapping (niter, softmask, wiener_win_len), got {type(options).__name__}")
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ModelError(f"{source}: umx.{unknown[0]} is not an Open-Unmix setting; known: {', '.join(DEFAULTS)}")
    niter, softmask, window = options.get("niter", 1), options.get("softmask", False), options.get("wiener_win_len", 300)
    if not whole(niter, 0):
        raise ModelError(f"{source}: umx.niter must be a whole number of EM iterations (0: none), got {niter!r}")
    if not isinstance(softmask, bool):
        raise ModelError(f"{source}: umx.softmask must be true or false, got {softmask!r}")
    if window is not None and not whole(window):
        raise ModelError(f"{source}: umx.wiener_win_len must be a positive number of frames or null, got {window!r}")


def check_card(card: ModelCard, source: str) -> None:
    """One-line errors for an umx card whose numbers disagree with each other."""
    if not whole(card.chunk_size):
        raise ModelError(f"{source}: chunk_size must be a positive whole number, got {card.chunk_size!r}")
    if card.hop > card.n_fft // 2:
        raise ModelError(f"{source}: hop {card.hop} is more than half of n_fft {card.n_fft}; the inverse STFT needs overlap")
    if card.chunk_size % card.hop or card.dim_t != card.chunk_size // card.hop + 1:
        raise ModelError(f"{source}: chunk_size {card.chunk_size} must be a multiple of hop {card.hop} and dim_t "
                         f"{card.dim_t} its frames, chunk_size // hop + 1 = {card.chunk_size // card.hop + 1}")
    if card.chunk_size < 8 * card.n_fft:
        raise ModelError(f"{source}: chunk_size {card.chunk_size} is shorter than 8 n_fft ({8 * card.n_fft}); "
                         "the LSTM needs context")
    if card.audio_channels not in (1, 2):
        raise ModelError(f"{source}: audio_channels must be 1 (a mono model) or 2, got {card.audio_channels!r}")
    if len(set(card.stems)) != len(card.stems):
        raise ModelError(f"{source}: stems {list(card.stems)} name a stem twice")
    if card.residual is not None and card.residual not in card.stems:
        raise ModelError(f"{source}: residual '{card.residual}' is not among the stems {list(card.stems)}")
    targets = [s for s in card.stems if s != card.residual]
    if not targets:
        raise ModelError(f"{source}: an umx card needs at least one target besides the residual")
    if len(targets) == 1 and card.residual is None and settings(card)["niter"]:
        raise ModelError(f"{source}: the Wiener filter needs two sources; with one target, name a residual stem "
                         "(openunmix's --residual) or set umx.niter to 0")


def _details(card: ModelCard) -> list[str]:
    s = settings(card)
    details = [f"{card.chunk_size / card.sample_rate:g} s chunks", f"niter {s['niter']}"]
    if s["softmask"]:
        details.append("softmask")
    if card.audio_channels == 1:
        details.append("mono")
    parity = (card.imported or {}).get("parity_db")
    if isinstance(parity, (int, float)) and not isinstance(parity, bool):
        details.append(f"parity {parity:.1f} dB")
    return details


#: Names every Open-Unmix target's state dict holds (its layers and per-bin statistics).
_KEYS = (b"fc1.weight", b"bn3.running_var", b"lstm.weight_ih_l0", b"input_scale", b"output_mean")


def _umx_state(path) -> bool:
    """Whether ``path`` is a torch zip whose pickled state dict names Open-Unmix's tensors (read without
    torch: the key names are strings in ``data.pkl``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1 or archive.getinfo(pickles[0]).file_size > 1 << 20:
                return False
            names = archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile):
        return False
    return all(key in names for key in _KEYS)


def _target_json(path) -> bool:
    """Whether ``path`` is an Open-Unmix target's JSON (openunmix's train.py: ``args.hidden_size``, ``args.nfft``)."""
    import json

    try:
        if path.stat().st_size > 1 << 22:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    args = data.get("args", data) if isinstance(data, dict) else None
    return isinstance(args, dict) and "hidden_size" in args and ("nfft" in args or "n_fft" in args)


def recognise(path) -> Found | None:
    """An Open-Unmix target's ``.pth`` or a folder of them, told from the tensors' names in the file or
    from the target JSON openunmix writes beside it (``T.json`` for ``T*.pth``)."""
    from pathlib import Path

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    jsons = [j for j in sorted(folder.glob("*.json")) if j.name != "separator.json" and _target_json(j)]
    if path.is_dir():
        files = [p for p in sorted(path.glob("*.pth")) if p.is_file()]
        if not jsons and not any(_umx_state(p) for p in files):
            return None
        stems = tuple(j.stem for j in jsons)
    else:
        paired = [j for j in jsons if path.name.startswith(j.stem)]
        if not (path.is_file() and torch_checkpoint(path)) or not (paired or _umx_state(path)):
            return None
        stems = (max(paired, key=lambda j: len(j.stem)).stem,) if paired else ()
    return Found(path=path, family="umx", stems=stems, command=f"stembridge models import {path}")


FAMILY = register(Family(
    name="umx",
    open_engine=lambda card, s: UmxEngine(card, threads=s.threads, batch_size=s.batch_size, device=s.device),
    requires=("n_fft", "hop", "chunk_size", "dim_t", "sample_rate", "file"),
    requires_hint=" (stembridge models import writes it)",
    prepare=_prepare, check=check_card, details=_details,
    default_overlap=lambda card: 0.0,
    importer="bridge.importers.umx:convert", imports=lambda path, config: recognise(path) is not None,
    import_help="Open-Unmix models (a folder of TARGET.json + TARGET*.pth, or one TARGET.pth with its JSON beside it)",
    recognise=recognise,
))
