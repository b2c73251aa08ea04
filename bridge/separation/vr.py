"""UVR's VR models (``stembridge models import MODEL.pth``): a magnitude mask on a multi-band
spectrogram, run as the reference runs it, in slices.

What the reference (python-audio-separator 0.47.1's ``VRSeparator``, UVR's VR architecture) does
with a whole song, with its defaults (window size 512, aggression 5, batch 1, no TTA, no
post-process, no high-end process):

1. the multi-band spectrogram of the song (:mod:`.vr_bands`), its magnitude and phase;
2. the magnitude zero-padded by ``offset`` frames before and up to a whole number of windows
   after, **divided by its largest value**, cut into windows of ``window_size`` frames every ``roi
   = window_size - 2 * offset`` frames; the network's mask for window ``k`` gives frames ``k *
   roi .. (k + 1) * roi - 1``;
3. UVR's aggression: the mask raised to ``1 + a / 3`` below the first band's top row and to ``1 +
   a`` above, ``a = 2 * aggression / 100`` (``1 - a`` when the primary stem is vocals, an instrument
   or "other"), plus the set's ``aggr_correction`` per channel;
4. primary = mask x magnitude x e^(i phase), secondary = (1 - mask) x the same, each back to a
   wave (:meth:`.vr_bands.Bands.synthesise`).

Here the song goes through in slices of ``patches`` windows (16) with ``margin`` windows of
context on each side (enough for the network's ``offset``, the STFTs and the resamplers), on the
reference's own window grid, and each slice keeps its middle. Every step is local to a window
except one: step 2's peak. A slice divides by the largest magnitude of the song *so far*,
through the end of its right margin (it cannot see further without holding the song). So the
output equals the reference's from the first slice that reaches the song's loudest frame on
(and everywhere for a song no longer than one slice, 16 windows of 512 frames: 89 s for a v5.1
model, 45 s for a v5), and before it is the model run on a quieter normalisation (measured in the
README). The song's end: the reference stops at its last whole hop of every band (up to about 20
ms before the end of the file); here the song runs to its last sample, its last window seeing the
STFT of the song's tail where the reference sees zeros.

Stems: the card's primary and secondary, named as UVR names them (``Vocals``/``Instrumental``,
``No Echo``/``Echo``, ``No Reverb``/``Reverb``, ...). As in the reference, the secondary is the
mask's complement, so primary + secondary is the mix through the band split and back (which drops
what the bands do not cover, e.g. above the pre-filter), not the mix itself: no residual stem.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np

from ..errors import ModelError
from .chunking import OverlapAdd
from .families import Family, register
from .models import ModelCard, verify_file
from .runtime import Runner, open_session, static_dims
from .vr_bands import NON_ACCOMPANIMENT, Bands, secondary_stem, uvr_vr_table

#: Windows of the reference's grid per slice (the part of a slice that is kept).
PATCHES = 16


@dataclasses.dataclass
class _StreamState:
    """What one song's slices share: how many came before, and the largest magnitude so far."""

    index: int = 0
    peak: float = 0.0


class VrEngine:
    """The model-specific part of a VR separator (see :class:`~.runner.Engine`).

    Parameters
    ----------
    card : ModelCard
        A ``family: vr`` card.
    threads : int, optional
        onnxruntime intra-op threads (default: every core).
    batch_size : int
        Windows per onnxruntime call.
    """

    def __init__(self, card: ModelCard, *, threads: int | None = None, batch_size: int = 1, device=None):
        path = verify_file(card)
        vr = card.vr
        self.bands = Bands(vr["band"], v51=bool(vr["v51"]), name=f"{card.source}: vr.band")
        session = open_session(path, threads=threads, device=device)
        dims = static_dims(session.get_inputs()[0].shape)
        if len(dims) != 4 or dims[1] != 2 or dims[2] != self.bands.bins + 1:
            raise ModelError(f"{path}: the model's input is {session.get_inputs()[0].shape}, but its card "
                             f"({card.source}) says [batch, 2, bins + 1 = {self.bands.bins + 1}, frames]; "
                             "import the model again")
        self.card = card
        self.runner = Runner(session, max_batch=batch_size)
        self.window = int(vr["window_size"])
        self.offset = int(vr["offset"])
        self.roi = self.window - 2 * self.offset or self.window
        aggression = float(vr["aggression"])
        value = 2 * aggression / 100
        primary = str(vr.get("primary_stem", card.outputs[0] if card.outputs else ""))
        if value and primary in NON_ACCOMPANIMENT:
            value = 1 - value
        correction = vr["band"].get("aggr_correction") if isinstance(vr["band"], dict) else None
        self.exponents = None
        if value:
            per_channel = [value + (correction or {}).get(side, 0.0) for side in ("left", "right")]
            split = self.bands.bands[0].crop_stop
            rows = self.bands.bins + 1
            self.exponents = np.ones((2, rows, 1))
            for ch, a in enumerate(per_channel):
                self.exponents[ch, :split] = 1 + a / 3
                self.exponents[ch, split:] = 1 + a
        hop = self.bands.hop
        self.margin = math.ceil((self.roi + self.offset + self.bands.settle) / self.roi)
        self.sample_rate = self.bands.sr
        self.chunk = (PATCHES + 2 * self.margin) * self.roi * hop
        self.trim = self.margin * self.roi * hop
        self.default_overlap = 0.0
        self.stems = card.stems
        self.residual_stem = None
        self.pad = "zeros"
        self.options = {"window_size": self.window, "aggression": aggression}
        self._lock = threading.Lock()

    def overlap_add(self, plan, *, channels: int, stems, run=None, batch_size: int = 1) -> OverlapAdd:
        """The runner's seam: slices on the reference's window grid, each knowing its place."""
        if plan.step != plan.keep or plan.trim != self.trim or plan.chunk != self.chunk:
            raise ModelError(f"{self.card.name}: a VR model slices the song on its own window grid; drop --overlap "
                             f"(asked {plan.overlap:g})")
        state = _StreamState()
        return OverlapAdd(plan, channels=channels, stems=stems, run=lambda chunks: self._run(chunks, state),
                          batch_size=batch_size, depth=1)

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """Slices from the song's start (a new song each call); streams go through :meth:`overlap_add`."""
        return self._run(chunks, _StreamState())

    def _run(self, chunks: np.ndarray, state: _StreamState) -> dict[str, np.ndarray]:
        out = {stem: np.zeros_like(chunks) for stem in self.stems}
        for i, chunk in enumerate(chunks):
            primary, secondary = self._slice(chunk, state)
            out[self.stems[0]][i], out[self.stems[1]][i] = primary, secondary
        return out

    def _slice(self, audio: np.ndarray, state: _StreamState) -> tuple[np.ndarray, np.ndarray]:
        roi, margin = self.roi, self.margin
        first_frame = (state.index * PATCHES - margin) * roi  # the song's frame at the slice's frame 0
        state.index += 1
        spec = self.bands.analyse(audio)
        exists = max(0, -first_frame)  # slice frames before the song's start do not exist
        spec[:, :, :exists] = 0
        mag, phase = np.abs(spec), np.angle(spec)
        state.peak = max(state.peak, float(mag.max()))
        scaled = mag / np.float32(state.peak) if state.peak > 0 else mag
        # Windows whose output frames the kept part's synthesis needs (one more at each side).
        first = max(margin - 1, exists // roi)
        last = margin + PATCHES
        # A window whose own frames are silent (past the song's end, where the slice is zero-padded,
        # or digital silence) needs no network: its mask multiplies zeros.
        needed = [q for q in range(first, last + 1) if mag[:, :, q * roi:(q + 1) * roi].any()]
        mask = np.zeros((2, mag.shape[1], (last + 1 - first) * roi), np.float32)
        if needed:
            windows = np.stack([scaled[:, :, q * roi - self.offset:q * roi - self.offset + self.window]
                                for q in needed])
            masks = next(iter(self.runner(windows).values()))
            for q, m in zip(needed, masks):
                mask[:, :, (q - first) * roi:(q - first + 1) * roi] = m[:, :, :roi]
        if self.exponents is not None:
            mask = np.power(mask, self.exponents.astype(np.float32))
        lo, hi = first * roi, (last + 1) * roi
        source = mag[:, :, lo:hi] * np.exp(1.0j * phase[:, :, lo:hi])
        stems = []
        for part in (mask * source, (1 - mask) * source):
            start, wave = self.bands.synthesise(part, lo, exists_from=exists)
            keep_lo, keep_hi = self.trim, self.chunk - self.trim
            if start > keep_lo or start + wave.shape[1] < keep_hi:
                raise ModelError(f"{self.card.name}: internal: slice synthesis covers {start}..{start + wave.shape[1]}, "
                                 f"not {keep_lo}..{keep_hi}")
            full = np.zeros_like(audio)
            full[:, keep_lo:keep_hi] = wave[:, keep_lo - start:keep_hi - start]
            stems.append(full)
        return stems[0], stems[1]


# --- the family ----------------------------------------------------------------------------------

VR_KEYS = ("params", "v51", "offset", "window_size", "aggression", "band")


def _prepare(data: dict, fields: dict, source: str) -> None:
    vr = data.get("vr")
    if not isinstance(vr, dict):
        raise ModelError(f"{source}: a vr card needs 'vr': a mapping ({', '.join(VR_KEYS)}); "
                         "stembridge models import writes it")
    missing = [k for k in VR_KEYS if k not in vr]
    if missing:
        raise ModelError(f"{source}: vr.{missing[0]} is missing (a vr card needs {', '.join(VR_KEYS)})")
    if data.get("imported") is not None and not isinstance(data["imported"], dict):
        raise ModelError(f"{source}: imported must be a mapping")
    if isinstance(data.get("primary"), str):
        vr = dict(vr)
        vr.setdefault("primary_stem", data["primary"])
        fields["vr"] = vr


def check_card(card: ModelCard, source: str) -> None:
    vr = card.vr
    Bands(vr["band"], v51=bool(vr["v51"]), name=f"{source}: vr.band")
    window, offset = vr["window_size"], vr["offset"]
    if not isinstance(window, int) or isinstance(window, bool) or window % 32 or window <= 2 * offset:
        raise ModelError(f"{source}: vr.window_size must be a multiple of 32 above 2 * offset = {2 * offset} "
                         f"(UVR offers 320, 512, 1024), got {window!r}")
    aggression = vr["aggression"]
    if not isinstance(aggression, (int, float)) or isinstance(aggression, bool) or not -100 <= aggression <= 100:
        raise ModelError(f"{source}: vr.aggression must be a number in [-100, 100] (UVR's default 5), got {aggression!r}")
    if len(card.stems) != 2:
        raise ModelError(f"{source}: a vr card has two stems (primary, secondary), got {list(card.stems)}")


def _details(card: ModelCard) -> list[str]:
    vr = card.vr or {}
    details = [f"{'v5.1' if vr.get('v51') else 'v5'} {vr.get('params')}",
               f"window {vr.get('window_size')}, aggression {vr.get('aggression')}"]
    parity = (card.imported or {}).get("parity_db")
    if isinstance(parity, (int, float)) and not isinstance(parity, bool):
        details.append(f"parity {parity:.1f} dB")
    return details


def _pickle_of(path) -> bytes:
    """The pickle of a torch file (the zip's ``data.pkl``, or a legacy file's head): its key names."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                return z.read(name)[:4 << 20] if name else b""
        with open(path, "rb") as handle:
            return handle.read(4 << 20)
    except (OSError, zipfile.BadZipFile, KeyError):
        return b""


def _is_vr_state(path) -> bool:
    """A torch file whose pickle names UVR VR networks' weights (v5: stg2_bridge, v5.1: stg3 + lstm)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in (".pth", ".pt", ".ckpt", ".bin"):
        return False
    pickle = _pickle_of(path)
    return b"stg1_low_band_net" in pickle and (b"stg2_bridge" in pickle or b"stg2_low_band_net" in pickle)


def _imports(path, config) -> bool:
    """A UVR VR state dict, given without ``--config``."""
    return config is None and _is_vr_state(path)


def _recognise(path):
    """A VR ``.pth`` by its weights' names, and its stems by UVR's hash table (unknown: needs --vr-params)."""
    from pathlib import Path

    from .families import Found

    path = Path(path)
    if not _is_vr_state(path):
        return None
    import hashlib

    from .models import UVR_HASH_BYTES

    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - UVR_HASH_BYTES))
        key = hashlib.md5(handle.read()).hexdigest()
    entry = uvr_vr_table()["models"].get(key)
    if entry is None:
        return Found(path=path, family="vr", command=f"stembridge models import {path} --vr-params NAME "
                                                     "(UVR's table does not know this file: name its parameter set)")
    primary = entry.get("primary_stem", "Vocals")
    return Found(path=path, family="vr", stems=(primary, secondary_stem(primary)),
                 command=f"stembridge models import {path}")


FAMILY = register(Family(
    name="vr",
    open_engine=lambda card, s: VrEngine(card, threads=s.threads, batch_size=s.batch_size, device=s.device),
    requires=("file", "sample_rate"),
    requires_hint=" (stembridge models import writes it)",
    prepare=_prepare, check=check_card, details=_details,
    default_overlap=lambda card: 0.0,
    importer="bridge.importers.vr:convert", imports=_imports, recognise=_recognise,
    import_help="UVR VR models (MODEL.pth; --vr-params NAME when UVR's table does not know it)",
))
