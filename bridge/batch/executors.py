"""Where songs run: in this process, in N local host processes, or on a Dask cluster.

Every executor takes ``(song, kwargs)`` jobs and yields :class:`~.jobs.SongOutcome` as songs
finish. Songs are independent, so the order of completion does not change any output.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading

from .host import Host, HostDied
from .jobs import RunSpec, SongOutcome, run_song


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1e6
    except OSError:
        return None
    return None


#: Peak memory of one render worker with the default model, rounded up (README, "Speed and memory").
WORKER_GB = 1.0


def auto_jobs(songs: int) -> int:
    """Jobs for ``--jobs auto``: one per core, as many as free memory holds, no more than songs."""
    memory = available_memory_gb()
    by_memory = max(1, int(memory // WORKER_GB)) if memory else available_cores()
    return max(1, min(available_cores(), by_memory, songs))


def threads_per_job(jobs: int, requested: int | None) -> int | None:
    """onnxruntime threads per job so that jobs x threads does not oversubscribe the cores."""
    if requested is not None:
        return requested
    return None if jobs == 1 else max(1, available_cores() // jobs)


class SerialExecutor:
    """Songs one after another in this process (the graph is built here, once)."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.stop = threading.Event()

    def map(self, jobs, *, progress_for=None):
        for song, kwargs in jobs:
            if self.stop.is_set():
                return
            progress = progress_for(song) if progress_for else None
            yield run_song(self.spec, song, progress=progress, **kwargs)

    def close(self) -> None:
        pass


def worker_specs(spec: RunSpec, jobs: int, *, count: int | None = None) -> list[RunSpec]:
    """One spec per local worker process, each owning one device: ``--jobs N`` on a machine with
    several GPUs spreads the workers over them (worker i on device ``i % count``), unless the
    run named a device index. ``count``: devices of that kind (default: what the machine shows)."""
    from ..separation.devices import Device, device_count, resolve_device, spread

    if spec.device is None or jobs == 1:
        return [spec] * jobs
    device = resolve_device(spec.device).device
    if not isinstance(device, Device) or device.kind == "cpu":
        return [spec] * jobs
    count = device_count(device.kind) if count is None else count

    return [dataclasses.replace(spec, device=str(spread(device, i, count))) for i in range(jobs)]


def task_resources(spec: RunSpec) -> dict | None:
    """What a Dask task asks of its worker: one ``GPU`` when the run names an accelerator (start
    such workers with ``dask worker ADDRESS --resources GPU=1``, one per GPU); None otherwise.
    ``auto`` asks for nothing: it runs on whatever each worker has."""
    from ..separation.devices import parse_device

    device = parse_device(spec.device or "auto")
    return {"GPU": 1} if device != "auto" and device.gpu else None


class ProcessExecutor:
    """``jobs`` local host processes, each with its own model and plugins, fed from one queue."""

    def __init__(self, spec: RunSpec, jobs: int):
        self.spec = spec
        self.specs = worker_specs(spec, jobs)
        self.hosts = [Host() for _ in range(jobs)]
        self.stop = threading.Event()

    def map(self, jobs, *, progress_for=None):
        todo: queue.Queue = queue.Queue()
        done: queue.Queue = queue.Queue()
        jobs = list(jobs)
        for job in jobs:
            todo.put(job)

        def drive(host: Host, spec: RunSpec) -> None:
            while not self.stop.is_set():
                try:
                    song, kwargs = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put(host.run(spec, song, **kwargs))
                except HostDied as exc:
                    done.put(SongOutcome(song.path, "failed", error=str(exc)))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    done.put(exc)

        threads = [threading.Thread(target=drive, args=(host, spec), daemon=True)
                   for host, spec in zip(self.hosts, self.specs)]
        for thread in threads:
            thread.start()
        for _ in range(len(jobs)):
            while True:
                try:
                    item = done.get(timeout=0.2)
                    break
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and done.empty():
                        return  # stopped early (fail-fast)
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        for host in self.hosts:
            host.close()


_DASK_HOST: Host | None = None


def _dask_task(spec: RunSpec, song, kwargs) -> SongOutcome:
    """Runs in a Dask worker thread: hand the song to this worker process's render host.

    Without ``--threads``, onnxruntime gets the worker's own ``nthreads``: Dask's word for the
    cores this worker may use. (All cores in every worker would oversubscribe the machine, and
    onnxruntime's spinning threads slow down badly when they share cores: 2.6x measured.)
    """
    global _DASK_HOST
    if _DASK_HOST is None:
        _DASK_HOST = Host()
    if spec.threads is None:
        spec = dataclasses.replace(spec, threads=_worker_threads())
    return _DASK_HOST.run(spec, song, **kwargs)


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    threads = getattr(worker, "nthreads", None) or getattr(getattr(worker, "state", None), "nthreads", None)
    return int(threads) if threads else None


class DaskExecutor:
    """One task per song on an existing ``distributed`` cluster.

    Each Dask worker process keeps one render host (model and plugins loaded once, songs on its
    main thread). A worker that dies mid-song has its task run again on another worker by the
    scheduler; partial files are hidden and pid-named, and the next writer removes them.
    """

    def __init__(self, spec: RunSpec, address: str):
        from ..errors import BridgeError

        try:
            from distributed import Client
        except ImportError:
            raise BridgeError('--scheduler needs Dask distributed: pip install "stembridge[dask]"') from None
        self.spec = spec
        try:
            self.client = Client(address, timeout=10, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise BridgeError(f"--scheduler {address}: cannot reach the Dask scheduler ({exc}); start it with "
                              "'dask scheduler' and check the address") from None
        self.stop = threading.Event()
        self._futures = []

    def map(self, jobs, *, progress_for=None):
        from distributed import as_completed

        jobs = list(jobs)
        by_future = {}
        resources = task_resources(self.spec)
        for song, kwargs in jobs:
            future = self.client.submit(_dask_task, self.spec, song, kwargs, pure=False, retries=1,
                                        resources=resources)
            by_future[future] = song
        self._futures = list(by_future)
        for future in as_completed(self._futures, loop=self.client.loop):
            if self.stop.is_set():
                return
            song = by_future[future]
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001 - a task error becomes that song's failure
                yield SongOutcome(song.path, "failed", error=f"{song.path}: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        for future in self._futures:
            future.cancel()
        self.client.close()
