"""Shared fixtures: seeded noise, tiny ONNX models with cards, real music from ../shared/data."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

import onnx_models  # noqa: E402
import vst3  # noqa: E402

DATA = REPO.parent / "shared" / "data"
if not DATA.is_dir():  # CI: shared/ beside the clone
    DATA = Path("/work/shared/data")

# Tests never touch the user's stem cache: one private cache for the whole run (subprocesses inherit it).
_TEST_CACHE = tempfile.mkdtemp(prefix="stembridge-test-cache-")
os.environ["STEMBRIDGE_CACHE"] = _TEST_CACHE


def pytest_unconfigure(config):
    """The run's private cache goes with the run (each run left one in the temp folder)."""
    shutil.rmtree(_TEST_CACHE, ignore_errors=True)

# Small STFT geometry so the tests run in seconds: chunk = hop * (dim_t - 1) = 128 * 31.
N_FFT, DIM_F, DIM_T = 512, 256, 32


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


def noise(rng, channels: int, samples: int, level: float = 0.1) -> np.ndarray:
    return (level * rng.standard_normal((channels, samples))).astype(np.float32)


def assert_streaming_equals_one_pass(separator, x: np.ndarray, sample_rate: int, sizes) -> None:
    """Feed ``x`` to a stream in blocks of ``sizes`` (then the rest): the stems must equal one pass."""
    whole = separator(x, sample_rate)
    stream = separator.stream(sample_rate=sample_rate, channels=x.shape[0])
    parts, at = [], 0
    for size in sizes:
        parts.append(stream.process(x[:, at:at + size]))
        at += size
    parts.append(stream.process(x[:, at:]))
    parts.append(stream.finish())
    for stem in whole:
        np.testing.assert_allclose(np.concatenate([p[stem] for p in parts], axis=1), whole[stem], atol=1e-6)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """Cards + tiny ONNX models: identity (primary instrumental / vocals), lowpass, nonlinear, mask."""
    d = tmp_path_factory.mktemp("models")
    ident = onnx_models.mdx_model(d / "identity.onnx", dim_f=DIM_F, dim_t=DIM_T)
    onnx_models.mdx_card(d / "identity-inst.yaml", ident, n_fft=N_FFT, dim_f=DIM_F, dim_t=DIM_T, primary="instrumental")
    onnx_models.mdx_card(d / "identity-voc.yaml", ident, n_fft=N_FFT, dim_f=DIM_F, dim_t=DIM_T, primary="vocals")
    low = onnx_models.mdx_model(d / "lowpass.onnx", dim_f=DIM_F, dim_t=DIM_T, kind="lowpass", cutoff_bin=24)
    onnx_models.mdx_card(d / "lowpass.yaml", low, n_fft=N_FFT, dim_f=DIM_F, dim_t=DIM_T, primary="vocals")
    nonlin = onnx_models.mdx_model(d / "nonlinear.onnx", dim_f=DIM_F, dim_t=DIM_T, kind="nonlinear")
    onnx_models.mdx_card(d / "nonlinear.yaml", nonlin, n_fft=N_FFT, dim_f=DIM_F, dim_t=DIM_T, primary="vocals",
                         compensate=1.02)
    mask = onnx_models.mask_model(d / "mask.onnx", bins=64, cutoff_bin=12)
    onnx_models.mask_card(d / "mask.yaml", mask, n_fft=256, bins=64, dim_t=32)
    return d


def missing(what: str) -> None:
    """Skip a test whose data or tool is missing; on CI (``CI`` set, as .ci/run sets it) fail it instead,
    so a broken data path never hides as skips there."""
    if vst3.in_ci():
        pytest.fail(f"{what}; CI must have it", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def need_data(path: Path) -> Path:
    """``path`` under ../shared/data (a file or folder), or a skip locally / a failure on CI."""
    if not path.exists():
        missing(f"real music not found at {path} (the shared/ folder beside the clone; see the README)")
    return path


TORCH = "; pip install -e \".[test]\" (CPU wheel: pip install torch --index-url https://download.pytorch.org/whl/cpu)"


def need_module(name: str, why: str = ""):
    """``import name``, or a skip locally / a failure on CI (where the test extra and .ci/run install it)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{name} is not installed ({exc}){why}")


@pytest.fixture(scope="session")
def music() -> Path:
    """A real song with stems (80s rock, 6.8 s, 44.1 kHz stereo)."""
    return need_data(DATA / "musdb7-80s-rock")


@pytest.fixture(scope="session")
def vst3_plugins() -> dict[str, Path]:
    """{name: .vst3 bundle}: sbgain, sblatency, sbsine, built from tests/plugins/ into tests/.cache/plugins."""
    try:
        return vst3.build_plugins(vst3.CACHE)
    except (vst3.BuildError, OSError) as exc:
        if vst3.in_ci():  # a broken build must not hide as skips on CI
            pytest.fail(f"the test VST3 plugins must build on CI: {exc}", pytrace=False)
        pytest.skip(f"test VST3 plugins not built ({exc})")


@pytest.fixture(scope="session")
def third_party() -> dict[str, Path]:
    """{name: .vst3 bundle} of real plugins built from Debian's dpf-plugins and zam-plugins sources.

    Kars, Nekobi (instruments); MVerb, 3BandEQ, PingPongPan, ZamCompX2 (stereo effects); ZamEQ2,
    ZamDelay (mono effects). Cached in tests/.cache/thirdparty.
    """
    try:
        return vst3.build_third_party(vst3.THIRD_PARTY_CACHE)
    except (vst3.BuildError, OSError) as exc:
        if vst3.in_ci():
            pytest.fail(f"the third-party VST3 plugins must build on CI: {exc}", pytrace=False)
        pytest.skip(f"third-party VST3 plugins not built ({exc})")
