"""The command's arguments: every subcommand and option of ``stembridge``, and the value checks
argparse runs. :mod:`bridge.cli` maps each subcommand (``handler``) to the function that runs it.
"""

from __future__ import annotations

import argparse
import sys

from .version import __version__

DESCRIPTION = ("Split songs into stems with a source-separation model, run each stem through its own effect "
               "chain (pedalboard built-ins or VST3 plugins), mix them back and render files; a whole session "
               "is one YAML preset.")

EPILOG = """examples:
  stembridge separate song.flac --out stems/            split a song into vocals and instrumental
  stembridge render presets/karaoke.yaml song.flac      render a song through a session preset
  stembridge render presets/vocal-up.yaml ~/Music/Album --out remixes/ --report
  stembridge preset check my-session.yaml               validate a preset without rendering
  stembridge models                                     the models you can name with --model
  stembridge models scan                                model files UVR, audio-separator, torch hub, MSST left

Run "stembridge COMMAND --help" for a command's options."""

SHIFTS_HELP = ("Demucs models: average N runs on the song shifted by seeded random delays up to 0.5 s "
               "(default: 1, as the demucs command; 0 = one unshifted run)")
INPUTS_HELP = ("audio and video files (wav, flac, ogg, mp3, aiff; m4a, opus, mp4, mov, mkv, ... and NI Stems "
               ".stem.mp4: anything FFmpeg decodes) and folders (walked recursively)")
STREAM_HELP = ("the audio stream to read from each input, numbered from 0 among its audio streams (as ffmpeg's "
               "-map 0:a:N; default: the file's default audio stream)")
DEVICE_CHOICES = "auto, cpu, cuda[:N], tensorrt[:N], coreml, directml[:N], openvino"
REPORT_HELP = ("also write OUT/stembridge-report.html: levels, waveforms, spectrograms and a player per output "
               "(pip install \"stembridge[report]\")")
VERBOSE_HELP = "show what third-party plugins and libraries print to stderr (hidden by default)"


class _Parser(argparse.ArgumentParser):
    """A parser whose missing subcommand is a sentence, not "required: preset_command"."""

    def error(self, message: str):
        if "the following arguments are required" in message and self._subparsers is not None:
            choices = next((a.choices for a in self._subparsers._group_actions
                            if isinstance(a, argparse._SubParsersAction)), None)
            if choices and any(isinstance(a, argparse._SubParsersAction) and (a.metavar or a.dest) in message
                               for a in self._subparsers._group_actions):
                self.print_usage(sys.stderr)
                self.exit(2, f"{self.prog}: error: name a command: {', '.join(choices)} "
                             f"(\"{self.prog} --help\" says what each does)\n")
        super().error(message)


def _command(commands, name: str, *, help: str, description: str | None = None, examples: str = ""):
    """A subcommand with a one-line purpose (in the command list and atop its help) and examples."""
    return commands.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                               epilog=f"examples:\n{examples}" if examples else None,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stembridge", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"stembridge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    sep = _command(commands, "separate", help="split songs into stem files with a separation model", examples="""\
  stembridge separate song.flac other.mp3 --out stems/
  stembridge separate ~/Music/Album --out stems/ --format flac --report
  stembridge separate song.flac --stems vocals --name '{stem}/{track}.{ext}'
  stembridge separate song.flac --model default --model dsp --ensemble avg_wave --weights 2,1""")
    sep.add_argument("inputs", nargs="+", help=INPUTS_HELP)
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
    sep.add_argument("--name", default="{track}/{stem}.{ext}",
                     help="output name template with {track}, {stem}, {ext}, {album}, {relpath}, {model} "
                          "(default: %(default)s)")
    sep.add_argument("--stems", help="comma-separated stems to write (default: all the model gives)")
    sep.add_argument("--format", default="wav", choices=["wav", "flac", "ogg", "aiff", "m4a", "opus", "mp3"],
                     help="audio file format of the stems: wav, flac, ogg (Vorbis), aiff, m4a (AAC or ALAC), "
                          "opus (48 kHz), mp3 (default: %(default)s)")
    sep.add_argument("--codec", metavar="CODEC", help="--format m4a: aac (lossy, default) or alac (lossless)")
    sep.add_argument("--bitrate", type=float, metavar="KBPS",
                     help="kbit/s of aac (32-512, default 256 per 2 channels), opus (6-510, default 160) "
                          "or mp3 (32-320, default 320)")
    sep.add_argument("--bit-depth", type=int, default=24, choices=[16, 24, 32], help="PCM bits; 32 = float (default: %(default)s)")
    sep.add_argument("--overlap", type=float, help="chunk overlap in [0, 1) (default: per model)")
    sep.add_argument("--batch-size", type=_batch_value, default=1, metavar="N",
                     help="chunks per model call, or 'auto' (1 on the CPU, sized to free memory on a GPU) "
                          "(default: %(default)s)")
    sep.add_argument("--device", default="auto", type=_device_value,
                     help=f"where the model runs: {DEVICE_CHOICES} "
                          "(default: %(default)s, the best this onnxruntime offers; stembridge doctor shows it)")
    sep.add_argument("--threads", type=int, help="onnxruntime threads per job (default: the cores divided by --jobs)")
    sep.add_argument("--denoise", action="store_true", help="MDX-Net models only: average model(x) and -model(-x)")
    sep.add_argument("--invert", action="store_true", help="MDX-Net models only: spectral inversion for the other stem")
    sep.add_argument("--wiener", type=int, default=0, metavar="N",
                     help="mask models: N EM iterations of the multichannel Wiener filter, 0 = off (default: %(default)s)")
    sep.add_argument("--shifts", type=int, metavar="N", help=SHIFTS_HELP)
    sep.add_argument("--project", choices=["reaper"], help="also write <track>.rpp, a REAPER project of the stems")
    sep.add_argument("--no-bwf", action="store_true", help="plain wav: no bext/iXML (Broadcast WAV) chunks")
    sep.add_argument("--report", action="store_true", help=REPORT_HELP)
    sep.add_argument("--stream", type=_stream_value, metavar="N", help=STREAM_HELP)
    _add_batch_arguments(sep)
    sep.set_defaults(handler="separate")

    ren = _command(commands, "render", help="render songs through a session preset (split, stem chains, mix)",
                   examples="""\
  stembridge render presets/karaoke.yaml song.flac --out karaoke/
  stembridge render presets/vocal-up.yaml ~/Music/Album --out remixes/ --jobs auto --report
  stembridge render presets/karaoke.yaml song.flac --set stems.vocals.gain_db=-12
  stembridge render presets/karaoke.yaml song.flac --set 'output.files.mix="{track}.karaoke.{ext}"'""")
    ren.add_argument("preset", help="session preset .yaml (see presets/)")
    ren.add_argument("inputs", nargs="+", help=INPUTS_HELP)
    ren.add_argument("--out", default="rendered", help="output folder (default: %(default)s)")
    ren.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a preset value, e.g. --set stems.vocals.gain_db=6; the value is YAML, so quote a "
                          "name template: --set 'output.files.mix=\"{track}.{ext}\"' (repeatable)")
    ren.add_argument("--threads", type=int, help="onnxruntime threads per job (default: the cores divided by --jobs)")
    ren.add_argument("--device", type=_device_value,
                     help=f"where the model runs: {DEVICE_CHOICES} (default: the preset's separator.device, auto)")
    ren.add_argument("--project", choices=["reaper"], help="also write <track>.rpp, a REAPER project of the "
                     "session (= --set output.project=reaper)")
    ren.add_argument("--report", action="store_true", help=REPORT_HELP + " (= --set output.report=true)")
    ren.add_argument("--stream", type=_stream_value, metavar="N", help=STREAM_HELP + " (= --set input.stream=N)")
    _add_batch_arguments(ren)
    ren.set_defaults(handler="render")

    ev = _command(commands, "eval", help="score models and ensembles against reference stems (SDR, SIR, SAR, ISR, SI-SDR)",
                  examples="""\
  stembridge eval --references ../shared/data --json scores.json
  stembridge eval --model oracle --references ../shared/data     the ideal ratio mask: a ceiling
  stembridge eval --model default --model dsp --ensemble avg_wave --references ../shared/data""")
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
                    help=f"where the model runs: {DEVICE_CHOICES} (default: %(default)s)")
    ev.add_argument("--wiener", type=int, default=0, metavar="N",
                    help="mask models: N EM iterations of the multichannel Wiener filter, 0 = off (default: %(default)s)")
    ev.add_argument("--shifts", type=int, metavar="N", help=SHIFTS_HELP)
    ev.add_argument("--stream", type=_stream_value, metavar="N",
                    help="the mixtures' audio stream, numbered from 0 among their audio streams (default: each "
                         "file's default one)")
    ev.add_argument("--quiet", action="store_true", help="print the table only (no progress, no notes)")
    ev.set_defaults(handler="eval")

    preset = _command(commands, "preset", help="work with session presets (check one without rendering)",
                      examples="  stembridge preset check presets/karaoke.yaml my-session.yaml")
    preset_commands = preset.add_subparsers(dest="preset_command", metavar="ACTION", parser_class=_Parser)
    preset_commands.required = True
    check = _command(preset_commands, "check", help="validate presets without rendering (loads every plugin)",
                     examples="  stembridge preset check my-session.yaml --set output.layout=5.1")
    check.add_argument("presets", nargs="+", help="preset .yaml files")
    check.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset value first (repeatable)")
    check.set_defaults(handler="preset_check")

    fx = _command(commands, "effects", help="list the built-in effects a preset can name, with their parameters",
                  examples="  stembridge effects")
    fx.set_defaults(handler="effects")

    plug = _command(commands, "plugins", help="list VST3 plugins: kind, channels, latency, parameters",
                    examples="  stembridge plugins\n  stembridge plugins ~/my-vst3 --json")
    plug.add_argument("dirs", nargs="*", metavar="DIR", help="folders to search (default: $VST3_PATH, ~/.vst3, "
                      "/usr/lib/vst3, /usr/local/lib/vst3)")
    plug.add_argument("--json", action="store_true", help="print the same as JSON")
    plug.set_defaults(handler="plugins")

    models = _command(commands, "models", help="list known models and where they are looked for; import or quantize one",
                      examples="  stembridge models\n  stembridge models import ~/pretrained_models/4stems\n"
                               "  stembridge models quantize NAME --fp16")
    models.set_defaults(handler="models")
    models_commands = models.add_subparsers(dest="models_command", metavar="ACTION", parser_class=_Parser)
    imp = _command(models_commands, "import", help="convert a Spleeter TensorFlow checkpoint (2/4/5 stems), a "
                                                   "BS-/Mel-Band RoFormer or a Demucs checkpoint into the user model folder",
                   examples="  stembridge models import ~/pretrained_models/4stems\n"
                            "  stembridge models import model.ckpt --config config.yaml")
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
    imp.add_argument("--vr-params", metavar="NAME", help="UVR VR model: its parameter set (e.g. 4band_v3), when UVR's "
                                                         "hash table does not know the file")
    imp.add_argument("--vr-nout", type=int, metavar="N", help="UVR VR v5.1 model: nout (UVR's default 32)")
    imp.add_argument("--vr-nout-lstm", type=int, metavar="N", help="UVR VR v5.1 model: nout_lstm (UVR's default 128)")
    imp.add_argument("--vr-primary", metavar="STEM", help="UVR VR model: its primary stem as UVR names it "
                                                          "(Vocals, Instrumental, No Echo, No Reverb, ...)")
    imp.set_defaults(handler="models_import")
    scan = _command(models_commands, "scan", help="find model files other tools left (UVR, python-audio-separator, "
                                                 "torch hub, MSST) and list how to run or import each",
                    examples="  stembridge models scan\n  stembridge models scan ~/Downloads/models --json\n"
                             "  stembridge models scan --import")
    scan.add_argument("folders", nargs="*", metavar="FOLDER",
                      help="folders to scan, instead of the tools' usual ones (UVR's models folder, "
                           "$AUDIO_SEPARATOR_MODEL_DIR or /tmp/audio-separator-models, torch hub's checkpoints, "
                           "~/Music-Source-Separation-Training, stembridge's model folders)")
    scan.add_argument("--import", dest="do_import", action="store_true",
                      help="import every model that needs it, skipping those already imported (by checksum)")
    scan.add_argument("--json", action="store_true", help="print the same as JSON")
    scan.set_defaults(handler="models_scan")
    quant = _command(models_commands, "quantize", help="write an int8 variant of a roformer model (a new model: "
                                                       "faster on CPUs with VNNI, slightly different output)",
                     examples="  stembridge models quantize my-roformer\n  stembridge models quantize default --fp16")
    quant.add_argument("model", help="model name or card .yaml (a roformer)")
    quant.add_argument("--name", help="the new model's name (default: NAME-int8, or NAME-fp16)")
    quant.add_argument("--fp16", action="store_true", help="write a float16 variant instead (any model with an ONNX "
                                                           "file; for GPUs; float32 in and out)")
    quant.add_argument("--force", action="store_true", help="replace a model of the same name")
    quant.set_defaults(handler="models_quantize")

    doctor = _command(commands, "doctor", help="show the onnxruntime build, its devices and what --device auto picks",
                      examples="  stembridge doctor")
    doctor.set_defaults(handler="doctor")

    cache = _command(commands, "cache", help="show the stem cache (where, size, entries) or empty it",
                     examples="  stembridge cache\n  stembridge cache clear")
    cache.add_argument("action", nargs="?", choices=["info", "clear"], default="info",
                       help="info: location, size, entries and cap; clear: remove every entry (default: %(default)s)")
    cache.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: $STEMBRIDGE_CACHE, "
                                                          "$XDG_CACHE_HOME/stembridge or ~/.cache/stembridge)")
    cache.add_argument("--cache-max-gb", type=float, metavar="GB", help="size cap (default: 20, or $STEMBRIDGE_CACHE_MAX_GB)")
    cache.set_defaults(handler="cache")
    for command in (sep, ren, ev, check, fx, plug, models, imp, scan, quant, doctor, cache):
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
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


def _stream_value(text: str) -> int:
    """A whole number from 0: an audio stream's number."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected the number of an audio stream (0, 1, ...), got {text!r}")
    return value
