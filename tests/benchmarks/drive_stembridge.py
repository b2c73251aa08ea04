"""Run ``stembridge separate`` once and write timings as JSON.

    python drive_stembridge.py --result R.json -- separate INPUT --model ... --out ...

Everything after ``--`` goes to ``bridge.cli.main`` unchanged, so this is the CLI plus two
perf_counter pairs: onnxruntime's ``InferenceSession.run`` is wrapped to sum the model's time
(as drive_audiosep.py does for python-audio-separator), and the whole call is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ort_timer import OrtTimer  # beside this script

T0 = time.perf_counter()


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv[:split])
    cli_args = argv[split + 1:]

    ort_time = OrtTimer()

    from bridge import cli

    t_import = time.perf_counter()
    code = cli.main(cli_args)
    t_end = time.perf_counter()
    result = {"import_s": t_import - T0, "run_s": t_end - t_import, "ort_s": ort_time.seconds, "ort_calls": ort_time.calls,
              "exit": code}
    Path(args.result).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
