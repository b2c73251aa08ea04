"""Random-weight Demucs model files, built with the ``demucs`` package's classes and saved exactly
as Demucs saves them (``demucs.states.serialize_model`` then ``torch.save``; the file name
``<signature>-<sha256[:8]>.th`` as ``save_with_checksum`` writes it), and Demucs bag files.

The constructor arguments are the published ones: Demucs's training config (``conf/config.yaml``,
``htdemucs:`` section) with the ``mmi`` grid's overrides (``dconv_mode 3, depth 4, t_dropout 0.02,
t_layers 5``), ``bottom_channels`` 512 (htdemucs, each htdemucs_ft specialist) or 0 (htdemucs_6s),
segment ``Fraction(39, 5)``. :func:`reduced` keeps every code path (depth, branches, transformer,
bottom channels when non-zero) with fewer channels, transformer layers and a shorter segment so
the tests run in seconds.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import inspect
import io
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import torch

SOURCES_4 = ["drums", "bass", "other", "vocals"]
SOURCES_6 = ["drums", "bass", "other", "vocals", "guitar", "piano"]

HTDEMUCS_CONFIG = dict(
    channels=48, channels_time=None, growth=2, nfft=4096, wiener_iters=0, end_iters=0, wiener_residual=False,
    cac=True, depth=4, rewrite=True, multi_freqs=[], multi_freqs_depth=3, freq_emb=0.2, emb_scale=10,
    emb_smooth=True, kernel_size=8, stride=4, time_stride=2, context=1, context_enc=0, norm_starts=4,
    norm_groups=4, dconv_mode=3, dconv_depth=2, dconv_comp=8, dconv_init=1e-3, bottom_channels=512, t_layers=5,
    t_hidden_scale=4.0, t_heads=8, t_dropout=0.02, t_layer_scale=True, t_gelu=True, t_emb="sin",
    t_max_positions=10000, t_max_period=10000.0, t_weight_pos_embed=1.0, t_cape_mean_normalize=True,
    t_cape_augment=True, t_cape_glob_loc_scale=[5000.0, 1.0, 1.4], t_sin_random_shift=0, t_norm_in=True,
    t_norm_in_group=False, t_group_norm=False, t_norm_first=True, t_norm_out=True, t_weight_decay=0.0, t_lr=None,
    t_sparse_self_attn=False, t_sparse_cross_attn=False, t_mask_type="diag", t_mask_random_seed=42,
    t_sparse_attn_window=400, t_global_window=100, t_sparsity=0.95, t_auto_sparsity=False, t_cross_first=False,
    rescale=0.1, audio_channels=2, samplerate=44100, segment=Fraction(39, 5),
)


def published(sources=SOURCES_4, **overrides) -> dict:
    """HTDemucs keyword arguments as the published htdemucs (4 sources) / htdemucs_6s (6) files hold them."""
    from demucs.htdemucs import HTDemucs

    kwargs = dict(HTDEMUCS_CONFIG, sources=list(sources))
    if len(sources) == 6:
        kwargs["bottom_channels"] = 0
    kwargs.update(overrides)
    known = inspect.signature(HTDemucs).parameters
    return {k: v for k, v in kwargs.items() if k in known}


def reduced(sources=SOURCES_4, **overrides) -> dict:
    """:func:`published` with fewer channels, 2 transformer layers and a 1.95 s segment."""
    small = dict(channels=8, t_layers=2, segment=Fraction(39, 20))
    if len(sources) != 6:
        small["bottom_channels"] = 32
    small.update(overrides)
    return published(sources, **small)


#: hdemucs_mmi's arguments: HDemucs with the training config's ``hdemucs:`` section (the ``mmi``
#: grid overrides only ``htdemucs.*`` keys), segment 4 x the training segment of 10 s (the bag file
#: ``hdemucs_mmi.yaml`` sets 44 s). 83.6 M parameters.
HDEMUCS_CONFIG = dict(
    channels=48, channels_time=None, growth=2, nfft=4096, wiener_iters=0, end_iters=0, wiener_residual=False,
    cac=True, depth=6, rewrite=True, hybrid=True, hybrid_old=False, multi_freqs=[], multi_freqs_depth=3,
    freq_emb=0.2, emb_scale=10, emb_smooth=True, kernel_size=8, stride=4, time_stride=2, context=1,
    context_enc=0, norm_starts=4, norm_groups=4, dconv_mode=1, dconv_depth=2, dconv_comp=4, dconv_attn=4,
    dconv_lstm=4, dconv_init=1e-3, rescale=0.1, audio_channels=2, samplerate=44100, segment=40,
)


def hdemucs_published(sources=SOURCES_4, **overrides) -> dict:
    """HDemucs keyword arguments as the published hdemucs_mmi file holds them."""
    return dict(HDEMUCS_CONFIG, sources=list(sources), **overrides)


def hdemucs_reduced(sources=SOURCES_4, **overrides) -> dict:
    """:func:`hdemucs_published` with 8 channels (every layer, the BLSTMs and attention kept), and
    started so that the deep layers reach the output: GroupNorm from the first layer
    (``norm_starts`` 0), no weight rescaling, the residual branches' LayerScale at 1. Started as
    published (an untrained model), a 1% change of the BLSTMs' output moves the stems by 110 dB
    and of the 5th encoder's by 97 dB: a 60 dB parity test could not see them. Here the BLSTMs
    are about 25 dB below the output (trained models have learnt such scales)."""
    return hdemucs_published(sources, **dict(dict(channels=8, norm_starts=0, rescale=0, dconv_init=1.0), **overrides))


def build(kwargs: dict, *, seed: int):
    """HTDemucs, or HDemucs for :func:`hdemucs_published` arguments, with seeded random weights."""
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    klass = HDemucs if "hybrid" in kwargs else HTDemucs
    return klass(**kwargs).eval()


def save(model, folder: Path, signature: str) -> Path:
    """``serialize_model`` + ``torch.save`` as ``<signature>-<sha256[:8]>.th`` (Demucs's save_with_checksum)."""
    from demucs.states import serialize_model
    from omegaconf import OmegaConf

    package = serialize_model(model, OmegaConf.create({"model": type(model).__name__.lower(), "seed": 42}))
    buffer = io.BytesIO()
    torch.save(package, buffer)
    path = Path(folder) / f"{signature}-{hashlib.sha256(buffer.getvalue()).hexdigest()[:8]}.th"
    path.write_bytes(buffer.getvalue())
    return path


def save_bag(folder: Path, name: str, signatures, weights=None, segment=None) -> Path:
    lines = [f"models: {list(signatures)!r}"]
    if weights is not None:
        lines.append("weights: [" + ", ".join("[" + ", ".join(f"{w:.1f}" for w in row) + "]" for row in weights) + "]")
    if segment is not None:
        lines.append(f"segment: {segment}")
    path = Path(folder) / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


#: The shared repo's one-hot bag: model 1 for drums and other, model 2 for bass and vocals.
BAG_WEIGHTS = [[1, 0, 1, 0], [0, 1, 0, 1]]
BAG_SEGMENT = 1.5  # seconds, shorter than the models' 1.95 s: BagOfModels's override
#: The reduced hdemucs_mmi's bag segment (the published bag says 44 s): a whole chunk is long enough
#: that both BLSTMs frame their input (over 9.3 s), and a song of 16 s ends with a chunk of 7.75 s.
HDEMUCS_SEGMENT = 11


@functools.lru_cache(maxsize=None)
def shared_repo() -> tuple[Path, Path]:
    """``(repo, models)``: a Demucs ``--repo`` folder and its import into a stembridge model folder,
    built once per test run and shared by the Demucs test files (each import is an ONNX export).

    ``repo`` holds htdemucs (``955717e8-*.th``), htdemucs_6s (``5c90dfd2-*.th``), two specialists
    (``f7e0c4bc``, ``d12395a8``), a reduced HDemucs (``75fc33f5``) and the bags ``htdemucs.yaml``,
    ``htdemucs_6s.yaml``, ``tiny_ft.yaml`` (:data:`BAG_WEIGHTS`, segment :data:`BAG_SEGMENT`) and
    ``hdemucs_mmi.yaml`` (segment :data:`HDEMUCS_SEGMENT`). ``models`` holds what ``stembridge
    models import`` made of them, each by another route: ``htdemucs`` from the ``.th`` file,
    ``htdemucs_6s`` and ``hdemucs_mmi`` from the bag file, ``tiny_ft`` from the folder and ``--name``.
    """
    from bridge.cli import main as cli

    root = Path(tempfile.mkdtemp(prefix="stembridge-demucs-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    repo, models = root / "repo", root / "models"
    repo.mkdir()
    single = save(build(reduced(), seed=11), repo, "955717e8")
    save(build(reduced(SOURCES_6), seed=12), repo, "5c90dfd2")
    save(build(reduced(), seed=13), repo, "f7e0c4bc")
    save(build(reduced(), seed=14), repo, "d12395a8")
    save_bag(repo, "htdemucs", ["955717e8"])
    six = save_bag(repo, "htdemucs_6s", ["5c90dfd2"])
    save_bag(repo, "tiny_ft", ["f7e0c4bc", "d12395a8"], weights=BAG_WEIGHTS, segment=BAG_SEGMENT)
    save(build(hdemucs_reduced(), seed=15), repo, "75fc33f5")
    mmi = save_bag(repo, "hdemucs_mmi", ["75fc33f5"], segment=HDEMUCS_SEGMENT)
    before = os.environ.get("STEMBRIDGE_MODELS")
    os.environ["STEMBRIDGE_MODELS"] = str(models)
    try:
        for argv in ([str(single), "--name", "htdemucs"], [str(six)], [str(repo), "--name", "tiny_ft"], [str(mmi)]):
            assert cli(["models", "import", *argv]) == 0, argv
    finally:
        if before is None:
            os.environ.pop("STEMBRIDGE_MODELS", None)
        else:
            os.environ["STEMBRIDGE_MODELS"] = before
    return repo, models
