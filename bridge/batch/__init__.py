"""Albums and libraries: folders in, a stem cache, resume, parallel jobs and Dask clusters.

``discover`` turns files and folders into songs; ``run_batch`` runs them through any executor
(this process, local host processes, or a Dask cluster) and reports every song's outcome. It
calls :mod:`bridge.render.song` per song, never the command line.
"""

from .discover import Song, discover
from .jobs import RunSpec, SongOutcome
from .run import RUN_RECORD, RunReport, run_batch, write_record

__all__ = ["RUN_RECORD", "RunReport", "RunSpec", "Song", "SongOutcome", "discover", "run_batch", "write_record"]
