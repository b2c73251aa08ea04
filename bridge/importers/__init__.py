"""Model conversion into the families stembridge runs: what ``stembridge models import`` calls.

:func:`import_model` asks each registered family (:mod:`bridge.separation.families`) whether the
path is one of its checkpoints, and hands it to that family's importer:

- a folder or ``.tar.gz`` holding a TensorFlow checkpoint (``*.index`` + ``*.data-*``):
  Spleeter's 2/4/5-stem U-Nets, the mask family, :mod:`.spleeter_tf`;
- a torch checkpoint (``.ckpt``, ``.pth``, ...) with ``config=`` its YAML config: BS-RoFormer or
  Mel-Band RoFormer, :mod:`.roformer` (needs torch);
- a Demucs ``.th`` file, a bag ``.yaml``, or a folder of them with ``name`` (as ``demucs -n NAME
  --repo FOLDER``): HT-Demucs, :mod:`.demucs` (needs torch and demucs);
- an Open-Unmix folder (``TARGET.json`` + ``TARGET*.pth`` per target) or one target's ``.pth``,
  told by the tensors it names: :mod:`.umx` (needs torch).

:mod:`.quantize` (``stembridge models quantize``) writes an int8 variant of an imported RoFormer.

Anything else is a clear error naming what can be imported. Importers need ``onnx`` (and torch
for RoFormers: the ``import`` extra) to write their graphs; nothing here is imported by the
run-time separators.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from ..separation import families


def import_model(path, *, config=None, **options):
    """Convert the model at ``path`` into the user model folder; returns what was written.

    With ``config`` (a RoFormer's YAML config) ``path`` is a torch checkpoint for
    :func:`.roformer.import_roformer` (``name``, ``force``, ``folder``); otherwise ``options`` go to
    :func:`.spleeter_tf.import_checkpoint` (``name``, ``force``, ``bins``, ``fp32``, ``folder``).
    """
    path = Path(path)
    # The roformer family claims every torch checkpoint (and refuses one without --config):
    # families that recognise a checkpoint by its contents (a UVR VR or Open-Unmix state dict)
    # are asked first, and roformer's claim by kind of file comes last.
    importable = sorted((f for f in families.registered().values() if f.importer is not None),
                        key=lambda f: f.name == "roformer")
    for family in importable:
        if config is None and family.recognise is not None and family.recognise(path) is not None:
            return family.load_importer()(path, config=config, **options)
    for family in importable:
        if family.imports(path, config):
            return family.load_importer()(path, config=config, **options)
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder; pass Spleeter's model folder (e.g. pretrained_models/4stems) "
                         "or its .tar.gz")
    raise ModelError(f"{path}: not a model stembridge can import; it imports "
                     f"{' and '.join(f.import_help for f in importable)}")
