"""Model conversion into the families stembridge runs: what ``stembridge models import`` calls.

:func:`import_model` looks at what a path is and hands it to the importer for that kind:

- a folder or ``.tar.gz`` holding a TensorFlow checkpoint (``*.index`` + ``*.data-*``):
  Spleeter's 2/4/5-stem U-Nets, :mod:`.spleeter_tf`;
- a torch checkpoint (``.ckpt``, ``.pth``, ...) with ``config=`` its YAML config: BS-RoFormer or
  Mel-Band RoFormer, :mod:`.roformer` (needs torch).

:mod:`.quantize` (``stembridge models quantize``) writes an int8 variant of an imported RoFormer.

Anything else is a clear error naming what can be imported. Importers need ``onnx`` (and torch
for RoFormers: the ``import`` extra) to write their graphs; nothing here is imported by the
run-time separators.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from ..errors import ModelError

#: Suffixes of torch checkpoints (the RoFormer releases use .ckpt and .pth).
TORCH_SUFFIXES = (".ckpt", ".pth", ".pt", ".th", ".bin")


def import_model(path, *, config=None, **options):
    """Convert the model at ``path`` into the user model folder; returns what was written.

    With ``config`` (a RoFormer's YAML config) ``path`` is a torch checkpoint for
    :func:`.roformer.import_roformer` (``name``, ``force``, ``folder``); otherwise ``options`` go to
    :func:`.spleeter_tf.import_checkpoint` (``name``, ``force``, ``bins``, ``fp32``, ``folder``).
    """
    path = Path(path)
    if config is not None:
        spleeter_only = [f"--{k}" for k in ("bins", "fp32") if options.pop(k, None)]
        if spleeter_only:
            raise ModelError(f"{' and '.join(spleeter_only)}: only for Spleeter checkpoints; drop it for a RoFormer")
        if path.is_dir() or (path.is_file() and tarfile.is_tarfile(path)):
            raise ModelError(f"{path}: a Spleeter checkpoint takes no --config; drop --config")
        from .roformer import import_roformer
        return import_roformer(path, config=config, **options)
    if path.is_file() and (path.suffix.lower() in TORCH_SUFFIXES or zipfile.is_zipfile(path)):
        raise ModelError(f"{path}: a torch checkpoint (BS-RoFormer or Mel-Band RoFormer) needs its YAML config: "
                         "pass --config CONFIG.yaml")
    if path.is_dir() or (path.is_file() and tarfile.is_tarfile(path)):
        from .spleeter_tf import import_checkpoint
        return import_checkpoint(path, **options)
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder; pass Spleeter's model folder (e.g. pretrained_models/4stems) "
                         "or its .tar.gz")
    raise ModelError(f"{path}: not a model stembridge can import; it imports Spleeter TensorFlow checkpoints "
                     "(a folder with model.index and model.data-00000-of-00001, or the release .tar.gz) and "
                     "BS-/Mel-Band RoFormer checkpoints (CHECKPOINT.ckpt --config CONFIG.yaml)")
