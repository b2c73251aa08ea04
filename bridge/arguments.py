"""The command's arguments: every subcommand and option of ``stembridge``, and the value checks
argparse runs. :mod:`bridge.cli` maps each subcommand (``handler``) to the function that runs it.
"""

from __future__ import annotations

import argparse

from .version import __version__

DESCRIPTION = "The stembridge command: parse arguments, call the library, report errors in one line."

SHIFTS_HELP = ("Demucs models: average N runs on the song shifted by seeded random delays up to 0.5 s "
               "(default: 1, as the demucs command; 0 = one unshifted run)")



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stembridge", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"stembridge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    sep = commands.add_parser("separate", help="split songs into stem files")
    sep.add_argument("inputs", nargs="+", help="audio files (wav, flac, ogg, mp3, aiff) and folders (walked recursively)")
    sep.add_argument("--model", action="append", metavar="MODEL",
                     help="model name, card .yaml or .onnx path, or 'dsp' (default: default); give it twice or "
                          "more with --ensemble to combine models")
    sep.add_argument("--ensemble", metavar="METHOD",
                     help="combine the --model values' common stems: avg_wave, median_wave, min_wave, max_wave, "
                          "avg_fft, median_fft, min_fft, max_fft, uvr_max_spec, uvr_min_spec, ensemble_wav")
    sep.add_argument("--weights", metavar="W1,W2,...", help="--ensemble avg_wave/avg_fft: one weight per --model")
    sep.add_argument("--residual", metavar="STEM",
                     help="--ensemble: the stem set to the mix minus the others, so the stems sum to the mix")
    sep.add_argument("--out", default="separated", help="output folder (default: %(default)s)")
    sep.add_argument("--name", default="{track}/{stem}.{ext}", help="output name template (default: %(default)s)")
    sep.add_argument("--stems", help="comma-separated stems to write (default: all the model gives)")
    sep.add_argument("--format", default="wav", choices=["wav", "flac", "ogg", "mp3", "aiff"])
    sep.add_argument("--bit-depth", type=int, default=24, choices=[16, 24, 32], help="PCM bits; 32 = float (default: %(default)s)")
    sep.add_argument("--overlap", type=float, help="chunk overlap in [0, 1) (default: per model)")
    sep.add_argument("--batch-size", type=_batch_value, default=1, metavar="N",
                     help="chunks per model call, or 'auto' (1 on the CPU, sized to free memory on a GPU) "
                          "(default: %(default)s)")
    sep.add_argument("--device", default="auto", type=_device_value,
                     help="where the model runs: auto, cpu, cuda[:N], tensorrt[:N], coreml, directml[:N], openvino "
                          "(default: %(default)s, the best this onnxruntime offers; stembridge doctor shows it)")
    sep.add_argument("--threads", type=int, help="onnxruntime threads per job (default: the cores divided by --jobs)")
    sep.add_argument("--denoise", action="store_true", help="MDX-Net: average model(x) and -model(-x)")
    sep.add_argument("--invert", action="store_true", help="MDX-Net: spectral inversion for the other stem")
    sep.add_argument("--wiener", type=int, default=0, metavar="N",
                     help="mask models: N EM iterations of the multichannel Wiener filter, 0 = off (default: %(default)s)")
    sep.add_argument("--shifts", type=int, metavar="N", help=SHIFTS_HELP)
    sep.add_argument("--project", choices=["reaper"], help="also write <track>.rpp, a REAPER project of the stems")
    sep.add_argument("--no-bwf", action="store_true", help="plain wav: no bext/iXML (Broadcast WAV) chunks")
    _add_batch_arguments(sep)
    sep.set_defaults(handler="separate")

    ren = commands.add_parser("render", help="render songs through a session preset (split, stem chains, mix)")
    ren.add_argument("preset", help="session preset .yaml (see presets/)")
    ren.add_argument("inputs", nargs="+", help="audio files (wav, flac, ogg, mp3, aiff) and folders (walked recursively)")
    ren.add_argument("--out", default="rendered", help="output folder (default: %(default)s)")
    ren.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a preset value, e.g. --set stems.vocals.gain_db=6 (repeatable)")
    ren.add_argument("--threads", type=int, help="onnxruntime threads per job (default: the cores divided by --jobs)")
    ren.add_argument("--device", type=_device_value,
                     help="where the model runs: auto, cpu, cuda[:N], tensorrt[:N], coreml, directml[:N], openvino "
                          "(default: the preset's separator.device, auto)")
    ren.add_argument("--project", choices=["reaper"], help="also write <track>.rpp, a REAPER project of the "
                     "session (= --set output.project=reaper)")
    _add_batch_arguments(ren)
    ren.set_defaults(handler="render")

    ev = commands.add_parser("eval", help="score a model against reference stems (SDR, SI-SDR)")
    ev.add_argument("--model", action="append", metavar="MODEL",
                    help="model name, card .yaml or .onnx path, 'dsp', or 'oracle' (the ideal ratio mask of the "
                         "references: a yardstick, not a model), or 'no-split' (the default model's instrumental "
                         "as each of drums, bass, other: the 4-stem baseline) (default: default); repeat it to "
                         "score several models in one table")
    ev.add_argument("--ensemble", action="append", metavar="METHOD",
                    help="also score the --model values combined by METHOD (repeatable; see separate --ensemble)")
    ev.add_argument("--weights", metavar="W1,W2,...", help="weights of the avg_wave/avg_fft ensembles, one per --model")
    ev.add_argument("--preset", action="append", metavar="FILE",
                    help="also score the separator.ensemble of a preset, named after the file (repeatable)")
    ev.add_argument("--references", required=True, metavar="DIR",
                    help="folder of songs, searched recursively: <song>/mixture.<ext> beside <song>/<stem>.<ext>")
    ev.add_argument("--json", metavar="FILE", help="also write the scores to FILE as JSON")
    ev.add_argument("--overlap", type=float, help="chunk overlap in [0, 1) (default: per model)")
    ev.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    ev.add_argument("--device", default="auto", type=_device_value,
                    help="where the model runs: auto, cpu, cuda[:N], tensorrt[:N], coreml, directml[:N], openvino ""(default: %(default)s)")
    ev.add_argument("--wiener", type=int, default=0, metavar="N",
                    help="mask models: N EM iterations of the multichannel Wiener filter, 0 = off (default: %(default)s)")
    ev.add_argument("--shifts", type=int, metavar="N", help=SHIFTS_HELP)
    ev.add_argument("--quiet", action="store_true", help="print the table only (no progress, no notes)")
    ev.set_defaults(handler="eval")

    preset = commands.add_parser("preset", help="work with session presets")
    preset_commands = preset.add_subparsers(dest="preset_command", required=True)
    check = preset_commands.add_parser("check", help="validate presets without rendering (loads every plugin)")
    check.add_argument("presets", nargs="+", help="preset .yaml files")
    check.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset value first")
    check.set_defaults(handler="preset_check")

    fx = commands.add_parser("effects", help="list the built-in effects a preset can name")
    fx.set_defaults(handler="effects")

    plug = commands.add_parser("plugins", help="list VST3 plugins: kind, channels, latency, parameters")
    plug.add_argument("dirs", nargs="*", metavar="DIR", help="folders to search (default: $VST3_PATH, ~/.vst3, "
                      "/usr/lib/vst3, /usr/local/lib/vst3)")
    plug.add_argument("--json", action="store_true", help="print the same as JSON")
    plug.set_defaults(handler="plugins")

    models = commands.add_parser("models", help="list known models and where they are looked for; import one")
    models.set_defaults(handler="models")
    models_commands = models.add_subparsers(dest="models_command")
    imp = models_commands.add_parser("import", help="convert a Spleeter TensorFlow checkpoint (2/4/5 stems) or a "
                                                    "BS-/Mel-Band RoFormer checkpoint into the user model folder")
    imp.add_argument("path", help="Spleeter checkpoint folder (model.index, model.data-*, model.meta) or its .tar.gz; "
                                  "or a RoFormer CHECKPOINT.ckpt (with --config)")
    imp.add_argument("--config", metavar="CONFIG.yaml",
                     help="RoFormer: the checkpoint's YAML config (model:, audio:, training:); needs torch")
    imp.add_argument("--name", help="model name (default: spleeter-4stems etc. from the stem count; a RoFormer's "
                                    "checkpoint file name)")
    imp.add_argument("--force", action="store_true", help="replace a model of the same name")
    imp.add_argument("--bins", type=int, choices=[1024, 1536],
                     help="band of the nets if model.meta is missing: 1024 (11 kHz) or 1536 (-16kHz models)")
    imp.add_argument("--fp32", action="store_true", help="store float32 weights (twice the size)")
    imp.set_defaults(handler="models_import")
    quant = models_commands.add_parser("quantize", help="write an int8 variant of a roformer model (a new model: "
                                                        "faster on CPUs with VNNI, slightly different output)")
    quant.add_argument("model", help="model name or card .yaml (a roformer)")
    quant.add_argument("--name", help="the new model's name (default: NAME-int8, or NAME-fp16)")
    quant.add_argument("--fp16", action="store_true", help="write a float16 variant instead (any model with an ONNX "
                                                           "file; for GPUs; float32 in and out)")
    quant.add_argument("--force", action="store_true", help="replace a model of the same name")
    quant.set_defaults(handler="models_quantize")

    doctor = commands.add_parser("doctor", help="the onnxruntime build, its devices and what --device auto picks")
    doctor.set_defaults(handler="doctor")

    cache = commands.add_parser("cache", help="the stem cache: where it is, its size (or 'cache clear')")
    cache.add_argument("action", nargs="?", choices=["info", "clear"], default="info")
    cache.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: $STEMBRIDGE_CACHE, "
                                                          "$XDG_CACHE_HOME/stembridge or ~/.cache/stembridge)")
    cache.add_argument("--cache-max-gb", type=float, metavar="GB", help="size cap (default: 20, or $STEMBRIDGE_CACHE_MAX_GB)")
    cache.set_defaults(handler="cache")
    return parser


def _jobs_value(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of songs at once (>= 1) or 'auto'")
    return value


def _batch_value(text: str):
    """A whole number or 'auto'; the range is checked with the other settings, in one line."""
    try:
        return int(text)
    except ValueError:
        return text


def _device_value(text: str) -> str:
    """Checked later, by the command (bridge.cli), so that a bad name is one line, not a usage screen."""
    return text.strip().lower()


def _add_batch_arguments(command) -> None:
    command.add_argument("--jobs", type=_jobs_value, default=1, metavar="N",
                         help="songs at once on this machine, or 'auto' (cores and free memory) (default: 1)")
    command.add_argument("--scheduler", metavar="ADDRESS",
                         help="send the songs to a Dask cluster, e.g. tcp://10.0.0.5:8786 (inputs and --out must be "
                              "on storage the workers share; pip install \"stembridge[dask]\")")
    command.add_argument("--force", action="store_true", help="render songs again even if their outputs are up to date")
    command.add_argument("--cache-dir", metavar="DIR", help="stem cache folder (default: $STEMBRIDGE_CACHE, "
                                                            "$XDG_CACHE_HOME/stembridge or ~/.cache/stembridge)")
    command.add_argument("--no-cache", action="store_true", help="neither read nor fill the stem cache")
    command.add_argument("--cache-max-gb", type=float, metavar="GB",
                         help="stem cache size cap; least recently used entries go first (default: 20, or "
                              "$STEMBRIDGE_CACHE_MAX_GB)")
    command.add_argument("--fail-fast", action="store_true", help="stop at the first bad input instead of skipping it")
    command.add_argument("--quiet", action="store_true", help="print nothing but errors")
