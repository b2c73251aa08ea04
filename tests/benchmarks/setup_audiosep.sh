#!/usr/bin/env bash
# Build a separate virtual environment with python-audio-separator 0.47.x for side-by-side runs.
#
#   bash tests/benchmarks/setup_audiosep.sh [VENV]        (default VENV: /work/venvs/audiosep)
#
# What it does (see tests/benchmarks/README.md for why each step is needed):
#   1. python -m venv VENV
#   2. torch==2.13.0 CPU first (the wheel on this machine's disk, via pip's find-links), so that
#      audio-separator does not pull a CUDA build;
#   3. audio-separator 0.47.x from PyPI, and imageio-ffmpeg (its wheel carries an ffmpeg binary);
#   4. VENV/bin/ffmpeg -> the imageio-ffmpeg binary, unless Debian's ffmpeg is on PATH;
#   5. a `torchvision` stub in VENV/stubs (PyPI's torchvision is linked against CUDA torch and
#      fails to load beside the CPU build; onnx2torch only imports torchvision.ops for converters
#      the MDX path never uses). run.py puts VENV/stubs on PYTHONPATH.
set -euo pipefail

VENV="${1:-/work/venvs/audiosep}"
PYTHON="${PYTHON:-python3}"
AUDIOSEP_SPEC="${AUDIOSEP_SPEC:-audio-separator>=0.47,<0.48}"  # must start with "audio-separator"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# 2. CPU torch before anything that depends on it, and kept: a constraint stops audio-separator's
#    dependencies (torch>=2.3, torchvision) from replacing it with a newer CUDA build.
"${PIP[@]}" "torch==2.13.0"
TORCH_VERSION="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
case "$TORCH_VERSION" in *+cpu) ;; *) echo "expected a CPU torch 2.13.0, got $TORCH_VERSION" >&2; exit 1 ;; esac
CONSTRAINTS="$VENV/constraints.txt"
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"
# 3. audio-separator itself with its CPU extra (onnxruntime), and an ffmpeg binary.
"${PIP[@]}" -c "$CONSTRAINTS" "audio-separator[cpu]${AUDIOSEP_SPEC#audio-separator}" imageio-ffmpeg
# PyPI's torchvision is built against CUDA torch and does not load beside the CPU build; the stub
# below replaces it.
"$VENV/bin/python" -m pip uninstall -y torchvision >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import torch; assert torch.__version__ == '$TORCH_VERSION', torch.__version__"

# 4. ffmpeg on PATH for audio-separator (it shells out to ffmpeg via pydub / ffmpeg-python).
if ! command -v ffmpeg >/dev/null 2>&1; then
    FFMPEG="$("$VENV/bin/python" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')"
    ln -sf "$FFMPEG" "$VENV/bin/ffmpeg"
    # pydub also looks for ffprobe; imageio-ffmpeg ships none, and audio-separator does not need it
    # for WAV input.
fi

# 5. torchvision stub.
STUB="$VENV/stubs/torchvision"
mkdir -p "$STUB/ops"
cat >"$STUB/__init__.py" <<'EOF'
"""Placeholder torchvision for audio-separator's MDX path (onnx2torch imports torchvision.ops)."""
__version__ = "0.0.0+stub"
EOF
cat >"$STUB/ops/__init__.py" <<'EOF'
"""Placeholders: the MDX models never use these operators."""


def _missing(name):
    def fail(*args, **kwargs):
        raise NotImplementedError(f"torchvision.ops.{name} is a stub in this benchmark environment")
    fail.__name__ = name
    return fail


nms = _missing("nms")
box_convert = _missing("box_convert")
roi_align = _missing("roi_align")
EOF

PYTHONPATH="$VENV/stubs" PATH="$VENV/bin:$PATH" "$VENV/bin/python" - <<'EOF'
from importlib import metadata
import shutil
import audio_separator.separator  # noqa: F401  (imports onnx2torch, torchvision stub)
print("audio-separator", metadata.version("audio-separator"), "torch", metadata.version("torch"),
      "onnxruntime", metadata.version("onnxruntime"), "ffmpeg", shutil.which("ffmpeg"))
EOF
