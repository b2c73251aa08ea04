"""Sum the time spent in onnxruntime's ``InferenceSession.run``, the same way for both tools.

Standard library only: drive_audiosep.py imports it inside python-audio-separator's own venv.
"""

from __future__ import annotations

import time


class OrtTimer:
    """Wraps ``InferenceSession.run`` for the whole process; read :attr:`seconds` and :attr:`calls`."""

    def __init__(self):
        import onnxruntime as ort

        self.seconds = 0.0
        self.calls = 0
        original = ort.InferenceSession.run
        timer = self

        def timed_run(session, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(session, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - start
                timer.calls += 1

        ort.InferenceSession.run = timed_run
