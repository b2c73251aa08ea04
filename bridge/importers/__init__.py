"""Model conversion into the families stembridge runs: what ``stembridge models import`` calls.

:func:`import_model` looks at what a path is and hands it to the importer for that kind:

- a folder or ``.tar.gz`` holding a TensorFlow checkpoint (``*.index`` + ``*.data-*``):
  Spleeter's 2/4/5-stem U-Nets, :mod:`.spleeter_tf`.

:mod:`.quantize` (``stembridge models quantize``) writes an int8 variant of an imported RoFormer.

Anything else is a clear error naming what can be imported. Importers need ``onnx`` (the
``import`` extra) to write their graphs; nothing here is imported by the run-time separators.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from ..errors import ModelError


def import_model(path, **options):
    """Convert the model at ``path`` into the user model folder; returns what was written.

    ``options`` go to the importer (:func:`.spleeter_tf.import_checkpoint`: ``name``, ``force``,
    ``bins``, ``fp32``, ``folder``).
    """
    path = Path(path)
    if path.is_dir() or (path.is_file() and tarfile.is_tarfile(path)):
        from .spleeter_tf import import_checkpoint
        return import_checkpoint(path, **options)
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder; pass Spleeter's model folder (e.g. pretrained_models/4stems) "
                         "or its .tar.gz")
    raise ModelError(f"{path}: not a model stembridge can import; it imports Spleeter TensorFlow checkpoints "
                     "(a folder with model.index and model.data-00000-of-00001, or the release .tar.gz)")
