"""Run python-audio-separator once, in its own venv, and write timings as JSON.

Run by run.py as ``VENV/bin/python drive_audiosep.py ...`` (with the torchvision stub on
PYTHONPATH); the whole process is the measured unit. Only the standard library and
audio-separator's own dependencies are imported here.

The onnxruntime time is summed by ort_timer.OrtTimer, the same wrapper drive_stembridge.py uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from ort_timer import OrtTimer  # beside this script

T0 = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--model-name", required=True, help="file name in --model-dir, e.g. UVR-MDX-NET-Inst_HQ_3.onnx")
    parser.add_argument("--out", required=True)
    parser.add_argument("--overlap", type=float, default=0.25,
                        help="MDX: the overlap fraction; --mdxc: MDXC's num_overlap (an integer)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--result", required=True)
    parser.add_argument("--pydub", action="store_true",
                        help="write with pydub (its default: always 16-bit) instead of soundfile (the input's subtype)")
    parser.add_argument("--mdxc", action="store_true",
                        help="an MDXC-family model (RoFormer): mdxc_params with the model's own segment size")
    args = parser.parse_args()

    ort_time = OrtTimer()

    from audio_separator.separator import Separator

    t_import = time.perf_counter()
    arch = {"mdx_params": {"hop_length": 1024, "segment_size": 256, "overlap": args.overlap,
                           "batch_size": args.batch_size, "enable_denoise": False}}
    if args.mdxc:
        arch = {"mdxc_params": {"segment_size": 256, "override_model_segment_size": False, "batch_size": args.batch_size,
                                "overlap": int(args.overlap), "pitch_shift": 0}}
    separator = Separator(log_level=logging.WARNING, model_file_dir=args.model_dir, output_dir=args.out,
                          output_format="WAV", use_soundfile=not args.pydub, **arch)
    separator.load_model(args.model_name)
    t_load = time.perf_counter()
    files = separator.separate(args.input)
    t_sep = time.perf_counter()
    result = {"import_s": t_import - T0, "load_s": t_load - t_import, "separate_s": t_sep - t_load,
              "ort_s": ort_time.seconds, "ort_calls": ort_time.calls, "outputs": [str(f) for f in files]}
    with open(args.result, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
