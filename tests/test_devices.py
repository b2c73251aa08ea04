"""Devices: --device parsing, auto's choice, one-line refusals, IO binding, batching, Dask resources.

This machine's onnxruntime is the CPU build: every named device but ``cpu`` is missing from it,
which is what the refusal tests use. What needs a GPU is in tests/benchmarks/gpu.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

import onnx_models
from bridge import cli
from bridge.batch import executors
from bridge.batch.jobs import RunSpec
from bridge.errors import PresetError
from bridge.separation import devices, load_separator, runtime
from bridge.separation.devices import Device, DeviceError
from bridge.render.records import model_identity
from conftest import DATA, need_data

CPU_BUILD = ["AzureExecutionProvider", "CPUExecutionProvider"]
CUDA_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("text, expected", [
    ("cpu", Device("cpu")), ("CUDA", Device("cuda")), ("cuda:1", Device("cuda", 1)),
    ("tensorrt:0", Device("tensorrt", 0)), ("coreml", Device("coreml")), ("directml:2", Device("directml", 2)),
    ("openvino", Device("openvino")), ("auto", "auto"), (" auto ", "auto"),
])
def test_device_names_parse(text, expected):
    assert devices.parse_device(text) == expected


@pytest.mark.parametrize("text, words", [
    ("gpu", "expected auto, cpu, cuda[:N]"), ("cuda:x", "whole number"), ("cuda:-1", "whole number"),
    ("coreml:1", "takes no device index"), ("cpu:0", "takes no device index"), ("", "expected auto"),
])
def test_bad_device_names_are_refused(text, words):
    with pytest.raises(DeviceError, match=words.replace("[", r"\[").replace("]", r"\]")):
        devices.parse_device(text)


@pytest.mark.parametrize("available, chosen", [
    (CPU_BUILD, "cpu"),
    (CUDA_BUILD, "cuda"),  # never TensorRT: it builds an engine per shape on the first run
    (["CoreMLExecutionProvider", "CPUExecutionProvider"], "coreml"),
    (["DmlExecutionProvider", "CPUExecutionProvider"], "directml"),
    (["OpenVINOExecutionProvider", "CPUExecutionProvider"], "openvino"),
    (["OpenVINOExecutionProvider", "DmlExecutionProvider", "CPUExecutionProvider"], "directml"),
    (["DmlExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider"], "coreml"),
    (["OpenVINOExecutionProvider", "CoreMLExecutionProvider", "CUDAExecutionProvider"], "cuda"),
    (["TensorrtExecutionProvider", "CPUExecutionProvider"], "cpu"),
    ([], "cpu"),
])
def test_auto_takes_the_first_provider_of_its_order(available, chosen):
    resolved = devices.resolve_device("auto", available=available)
    assert str(resolved.device) == chosen
    assert resolved.note.startswith("auto")
    assert ("no accelerator" in resolved.note) == (chosen == "cpu")


def test_named_device_is_never_auto_and_provider_options_carry_the_index():
    assert devices.resolve_device("cpu", available=CUDA_BUILD).device == Device("cpu")
    assert Device("cuda", 1).providers() == [("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]
    assert Device("directml").providers() == [("DmlExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    assert Device("coreml").providers() == [("CoreMLExecutionProvider", {}), "CPUExecutionProvider"]
    assert Device("cpu").providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize("kind, extra", [
    ("cuda", "stembridge[cuda]"), ("cuda:1", "stembridge[cuda]"), ("tensorrt", "stembridge[cuda]"),
    ("directml", "stembridge[directml]"), ("openvino", "stembridge[openvino]"), ("coreml", "macOS"),
])
def test_device_missing_from_this_onnxruntime_names_the_extra(kind, extra):
    with pytest.raises(DeviceError) as caught:
        devices.check_device(kind, available=CPU_BUILD, installed=["onnxruntime"])
    message = str(caught.value)
    assert "\n" not in message and extra in message and "CPUExecutionProvider" in message


def test_cuda_libraries_that_fail_to_load_are_one_line_with_the_fix(monkeypatch):
    monkeypatch.setattr(devices, "cuda_library_failure", lambda: "libcudnn.so.9: cannot open shared object file")
    with pytest.raises(DeviceError, match=r"does not load \(libcudnn.so.9: cannot open.*onnxruntime-gpu\[cuda,cudnn\]"):
        devices.check_device("cuda", available=CUDA_BUILD)


def test_a_device_index_that_does_not_exist_is_refused(monkeypatch):
    monkeypatch.setattr(devices, "cuda_library_failure", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert devices.check_device("cuda:1", available=CUDA_BUILD).device == Device("cuda", 1)
    with pytest.raises(DeviceError, match=r"no cuda device 2; this machine shows 2 \(cuda:0, cuda:1\)"):
        devices.check_device("cuda:2", available=CUDA_BUILD)


def test_side_by_side_install_is_one_line():
    assert devices.side_by_side_warning(["onnxruntime"]) is None
    line = devices.side_by_side_warning(["onnxruntime", "onnxruntime-gpu"])
    assert "\n" not in line and "pip uninstall -y onnxruntime onnxruntime-gpu" in line
    with pytest.raises(DeviceError, match="installed side by side"):
        devices.check_device("cuda", available=CPU_BUILD, installed=["onnxruntime", "onnxruntime-gpu"])


def test_cuda_library_probe_reports_the_loader_message(monkeypatch, tmp_path):
    """The probe loads onnxruntime's CUDA provider library and returns the loader's own words."""
    import onnxruntime

    fake = tmp_path / "onnxruntime"
    (fake / "capi").mkdir(parents=True)
    (fake / "capi" / "libonnxruntime_providers_cuda.so").write_bytes(b"not an ELF file")
    monkeypatch.setattr(onnxruntime, "__file__", str(fake / "__init__.py"))
    failure = devices.cuda_library_failure()
    assert failure and "\n" not in failure and len(failure) <= 160
    (fake / "capi" / "libonnxruntime_providers_cuda.so").unlink()
    assert "is missing" in devices.cuda_library_failure()


# --- The command: each refusal is one line, exit 2, before any work ---------------------------------------------

@pytest.fixture
def song(tmp_path) -> Path:
    rng = np.random.default_rng(5)
    path = tmp_path / "song.wav"
    sf.write(str(path), (0.1 * rng.standard_normal((44100, 2))).astype(np.float32), 44100, subtype="PCM_24")
    return path


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "tensorrt", "coreml", "directml:1", "openvino", "gpu", "cuda:x"])
def test_separate_refuses_a_device_in_one_line_before_any_work(song, tmp_path, capsys, device):
    out = tmp_path / "out"
    code = cli.main(["separate", str(song), "--model", "dsp", "--out", str(out), "--no-cache", "--device", device])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("stembridge: ") and device.split(":")[0] in lines[0]
    assert not out.exists()  # nothing written, no folder made


def test_render_refuses_the_presets_device_and_the_option(song, tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"version": 1, "separator": {"model": "dsp", "device": "cuda"}}))
    assert cli.main(["render", str(preset), str(song), "--out", str(tmp_path / "o"), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stembridge[cuda]" in err[0] and "p.yaml: separator.device: --device cuda:" in err[0]
    # --device overrides the preset's: the CPU runs it
    assert cli.main(["render", str(preset), str(song), "--out", str(tmp_path / "o"), "--no-cache",
                     "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["render", str(preset), str(song), "--out", str(tmp_path / "o2"), "--no-cache",
                     "--device", "openvino"]) == 2
    assert "stembridge[openvino]" in capsys.readouterr().err


def test_eval_refuses_a_missing_device(tmp_path, capsys):
    assert cli.main(["eval", "--references", str(tmp_path), "--device", "directml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stembridge[directml]" in err[0]


def test_separate_says_where_the_model_ran(song, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["separate", str(song), "--model", "dsp", "--out", str(out), "--no-cache"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.endswith("model on cpu (auto: this onnxruntime offers no accelerator, see stembridge doctor)")
    record = json.loads((out / "stembridge-run.json").read_text())
    assert record["devices"] == ["cpu"] and record["songs"][0]["device"] == "cpu"
    assert cli.main(["separate", str(song), "--model", "dsp", "--out", str(tmp_path / "o2"), "--no-cache",
                     "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("model on cpu")


def test_render_manifest_records_the_device_outside_the_identity(song, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"version": 1, "separator": {"model": "dsp"}}))
    assert cli.main(["render", str(preset), str(song), "--out", str(tmp_path / "o"), "--no-cache", "--quiet"]) == 0
    manifest = json.loads(next((tmp_path / "o").rglob("*.manifest.json")).read_text())
    assert manifest["model"]["device"] == "cpu"
    assert "device" not in json.dumps(manifest["model"]["identity"])


def test_doctor_lists_the_build_and_auto(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "CPUExecutionProvider" in out and "--device auto picks: cpu" in out
    assert "cuda: not in this build; pip install \"stembridge[cuda]\"" in out


def test_doctor_warns_of_a_side_by_side_install():
    lines = devices.doctor_lines(installed=["onnxruntime", "onnxruntime-gpu"])
    assert lines[-1].startswith("warning: onnxruntime and onnxruntime-gpu are installed side by side")


# --- Sessions on the device; a named device never falls back --------------------------------------------------

@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_session_whose_provider_did_not_start_is_refused(tmp_path):
    """Asked for CUDA, this CPU onnxruntime would open the session on the CPU (with a warning):
    the session is refused instead of running on the CPU silently."""
    model = onnx_models.mdx_model(tmp_path / "m.onnx", dim_f=16, dim_t=8)
    with pytest.raises(DeviceError, match="did not start its CUDAExecutionProvider"):
        runtime.open_session(model, threads=1, device=Device("cuda"))
    assert runtime.open_session(model, threads=1, device=Device("cpu")).get_providers() == ["CPUExecutionProvider"]


def _old_run(runner, feeds):
    """The run path before IO binding: ``session.run`` with a dict of inputs."""
    return runner.session.run(None, feeds)


def test_io_binding_equals_session_run_bit_for_bit(tmp_path, monkeypatch):
    model = onnx_models.mdx_model(tmp_path / "m.onnx", dim_f=64, dim_t=32, kind="nonlinear")
    runner = runtime.Runner(runtime.open_session(model, threads=1), max_batch=2)
    x = np.random.default_rng(1).standard_normal((5, 4, 64, 32)).astype(np.float32)
    bound = runner(x)["spec_out"]
    monkeypatch.setattr(runtime.Runner, "_run", _old_run)
    np.testing.assert_array_equal(bound, runner(x)["spec_out"])
    assert bound.flags.c_contiguous and bound.dtype == np.float32


def test_the_runner_runs_one_call_at_a_time(tmp_path):
    """Two batches are in flight (one's STFT beside the other's network): their network calls
    must not overlap (two sets of activations, the cores split between them). Eight threads
    call one runner; its session calls are timed from inside the real run."""
    import threading
    import time

    model = onnx_models.mdx_model(tmp_path / "m.onnx", dim_f=64, dim_t=32, kind="nonlinear")
    runner = runtime.Runner(runtime.open_session(model, threads=1), max_batch=1)
    spans, real_run = [], runner._run

    def timed(x):
        start = time.perf_counter()
        out = real_run(x)
        time.sleep(0.01)  # long enough that an unguarded second call would start inside it
        spans.append((start, time.perf_counter()))
        return out

    runner._run = timed
    x = np.random.default_rng(2).standard_normal((2, 4, 64, 32)).astype(np.float32)
    results = [None] * 8

    def call(i):
        results[i] = runner(x)["spec_out"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 16
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))
    for result in results:
        np.testing.assert_array_equal(result, results[0])


@pytest.fixture(scope="module")
def real_song():
    audio, rate = sf.read(str(need_data(DATA / "musdb7-80s-rock" / "mixture.flac")), dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T), rate


@pytest.mark.parametrize("card", ["nonlinear.yaml", "mask.yaml"])
def test_stems_on_real_music_equal_todays_path(models_dir, real_song, monkeypatch, card):
    """IO binding and batches of 1 or 4 chunks give today's stems (session.run, one chunk per call)
    bit for bit: the same kernels on the same values; a batched FFT or model call computes each
    chunk alone."""
    audio, rate = real_song
    bound = load_separator(str(models_dir / card), device="cpu", threads=1)(audio, rate)
    batched = load_separator(str(models_dir / card), device="cpu", threads=1, batch_size=4)(audio, rate)
    monkeypatch.setattr(runtime.Runner, "_run", _old_run)
    today = load_separator(str(models_dir / card), device="cpu", threads=1)(audio, rate)
    for stem in today:
        np.testing.assert_array_equal(bound[stem], today[stem])
        np.testing.assert_array_equal(batched[stem], today[stem])


def test_the_device_names_no_separation(models_dir):
    """The device is a run-time setting: the identity (cache key, resume checks) is the same."""
    a = load_separator(str(models_dir / "nonlinear.yaml"), device="cpu")
    b = load_separator(str(models_dir / "nonlinear.yaml"), device="auto")
    assert a.device == b.device == "cpu" and a.device_note is None and b.device_note.startswith("auto")
    assert model_identity(a) == model_identity(b) and "device" not in json.dumps(model_identity(a))


# --- --batch-size auto --------------------------------------------------------------------------------------------

def test_batch_size_auto_parses_and_is_one_on_the_cpu(models_dir, tmp_path, capsys):
    args = cli.build_parser().parse_args(["separate", "x.wav", "--batch-size", "auto"])
    assert args.batch_size == "auto"
    assert cli.build_parser().parse_args(["separate", "x.wav", "--batch-size", "3"]).batch_size == 3
    for bad in ("0", "big"):  # refused in one line, with the other settings
        assert cli.main(["separate", "x.wav", "--batch-size", bad, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "or 'auto'" in err[0], err
    assert load_separator(str(models_dir / "nonlinear.yaml"), batch_size="auto", device="cpu").batch_size == 1
    assert devices.auto_batch_size(Device("cpu"), chunk_samples=261120, free_bytes=80 << 30) == 1


def test_gpu_batch_size_from_a_given_free_memory():
    # UVR geometry: 261,120-sample chunks -> 261120 * 2 channels * 4 bytes * 256 = 534,773,760 bytes each.
    per_chunk = 534_773_760
    assert devices.gpu_batch_size(free_bytes=4 * per_chunk, chunk_samples=261120) == 2  # half the free memory
    assert devices.gpu_batch_size(free_bytes=40 * 2**30, chunk_samples=261120, weights_bytes=2**30) == 16  # capped
    assert devices.gpu_batch_size(free_bytes=9 * per_chunk, chunk_samples=261120, weights_bytes=per_chunk // 2) == 3  # 4.5 - 1 chunks
    assert devices.gpu_batch_size(free_bytes=2**20, chunk_samples=261120) == 1  # never below 1
    assert devices.auto_batch_size(Device("cuda"), chunk_samples=261120, free_bytes=4 * per_chunk) == 2


def test_preset_device_and_batch_size(tmp_path):
    from bridge.preset.session import load

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "separator": {"model": "dsp", "device": "cuda:1",
                                                                "batch_size": "auto"}}))
    session = load(path)
    assert session.separator.device == "cuda:1" and session.separator.batch_size == "auto"
    assert session.to_dict()["separator"]["device"] == "cuda:1"
    path.write_text(yaml.safe_dump({"version": 1, "separator": {"model": "dsp"}}))
    assert load(path).separator.device == "auto" and "device" not in load(path).to_dict()["separator"]
    path.write_text(yaml.safe_dump({"version": 1, "separator": {"device": "gpu"}}))
    with pytest.raises(PresetError, match=r"p.yaml: separator.device: 'gpu': expected auto, cpu"):
        load(path)


# --- Workers: one device each; Dask asks for a GPU -------------------------------------------------------------

def test_jobs_spread_workers_over_the_devices():
    spec = RunSpec(kind="separate", out_dir=Path("o"), device="cuda")
    specs = executors.worker_specs(spec, 3, count=2)
    assert [s.device for s in specs] == ["cuda:0", "cuda:1", "cuda:0"]
    named = RunSpec(kind="separate", out_dir=Path("o"), device="cuda:1")
    assert [s.device for s in executors.worker_specs(named, 2, count=2)] == ["cuda:1", "cuda:1"]
    assert [s.device for s in executors.worker_specs(spec, 2, count=None)] == ["cuda", "cuda"]  # cannot tell
    cpu = RunSpec(kind="separate", out_dir=Path("o"), device="cpu")
    assert executors.worker_specs(cpu, 2, count=2) == [cpu, cpu]


class _FakeClient:
    """Records what the executor submits (what Dask's scheduler would be told)."""

    def __init__(self):
        self.submitted = []
        self.loop = None

    def submit(self, fn, *args, **kwargs):
        self.submitted.append(kwargs)
        return _Done(args[1])


class _Done:
    def __init__(self, song):
        self.song = song

    def result(self):
        from bridge.batch.jobs import SongOutcome
        return SongOutcome(self.song.path, "rendered")

    def cancel(self):
        pass


@pytest.mark.parametrize("device, resources", [("cuda", {"GPU": 1}), ("cuda:1", {"GPU": 1}), ("coreml", {"GPU": 1}),
                                               ("cpu", None), ("auto", None), (None, None)])
def test_dask_tasks_ask_for_a_gpu_when_the_run_names_one(monkeypatch, device, resources):
    import distributed

    from bridge.batch.discover import Song

    spec = RunSpec(kind="separate", out_dir=Path("o"), device=device)
    assert executors.task_resources(spec) == resources
    executor = executors.DaskExecutor.__new__(executors.DaskExecutor)
    executor.spec, executor.client, executor._futures = spec, _FakeClient(), []
    import threading
    executor.stop = threading.Event()
    monkeypatch.setattr(distributed, "as_completed", lambda futures, loop=None: iter(futures))
    songs = [Song(Path(f"s{i}.wav"), None, "album") for i in range(2)]
    outcomes = list(executor.map([(s, {}) for s in songs]))
    assert len(outcomes) == 2
    assert [k["resources"] for k in executor.client.submitted] == [resources, resources]


def test_each_local_worker_process_gets_its_own_device(monkeypatch):
    """--jobs 2 --device cuda on a machine showing two GPUs: each host process runs its songs on its own."""
    from bridge.batch.discover import Song
    from bridge.batch.jobs import SongOutcome

    seen = []

    class FakeHost:
        def run(self, spec, song, **kwargs):
            import time
            time.sleep(0.05)  # a song takes time, so both workers take songs from the queue
            seen.append((id(self), spec.device))
            return SongOutcome(song.path, "rendered", device=spec.device)

        def close(self):
            pass

    monkeypatch.setattr(executors, "Host", FakeHost)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    executor = executors.ProcessExecutor(RunSpec(kind="separate", out_dir=Path("o"), device="cuda"), 2)
    songs = [Song(Path(f"s{i}.wav"), None, "album") for i in range(6)]
    outcomes = list(executor.map([(s, {}) for s in songs]))
    assert len(outcomes) == 6 and {o.device for o in outcomes} == {"cuda:0", "cuda:1"}
    by_host = {}
    for host, device in seen:
        by_host.setdefault(host, set()).add(device)
    assert sorted(tuple(d) for d in by_host.values()) == [("cuda:0",), ("cuda:1",)]  # one device per worker


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """An ``nvidia-smi`` on PATH answering the query stembridge makes, for two 80 GB GPUs."""
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nprintf 'NVIDIA H100 80GB HBM3, 81559, 80000\\nNVIDIA H100 80GB HBM3, 81559, 1024\\n'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{__import__('os').environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "cuda_library_failure", lambda: None)
    return tool


def test_what_nvidia_smi_shows_counts_sizes_and_is_shown(fake_nvidia_smi):
    assert devices.device_count("cuda") == 2 and devices.device_count("coreml") is None
    assert devices.free_memory(Device("cuda", 1)) == 1024 << 20 and devices.free_memory(Device("cuda", 2)) is None
    # 80000 MiB free: 41.9 GB usable, 78 UVR-size chunks, capped at 16; GPU 1's 1 GiB: 1 chunk
    assert devices.auto_batch_size(Device("cuda"), chunk_samples=261120) == 16
    assert devices.auto_batch_size(Device("cuda", 1), chunk_samples=261120) == 1
    with pytest.raises(DeviceError, match="no cuda device 2; this machine shows 2"):
        devices.check_device("cuda:2", available=CUDA_BUILD)
    lines = devices.doctor_lines(available=CUDA_BUILD, installed=["onnxruntime-gpu"])
    row = next(line for line in lines if line.strip().startswith("CUDAExecutionProvider"))
    assert "cuda:0 NVIDIA H100 80GB HBM3 78.1 of 79.6 GiB free; cuda:1 NVIDIA H100 80GB HBM3 1.0 of 79.6 GiB free" in row
    assert "--device auto picks: cuda" in "\n".join(lines)


def test_a_real_dask_scheduler_holds_gpu_songs_for_a_gpu_worker(tmp_path, song):
    """With a real scheduler: a --device cuda run waits while no worker offers a GPU (a CPU run
    goes through), and runs once a worker started with --resources GPU=1 joins; that worker's
    onnxruntime (this CPU build) then refuses CUDA in one line, as the song's failure."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys

    from conftest import REPO, missing

    dask = shutil.which("dask")
    if dask is None:
        missing("the dask command is not installed (pip install 'stembridge[dask]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    common = ["--no-dashboard", "--host", "127.0.0.1", "--nthreads", "1", "--local-directory", str(tmp_path)]
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)]

    def worker(*extra):
        processes.append(subprocess.Popen([dask, "worker", address, *common, *extra], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, env=env, start_new_session=True))

    def separate(device, out, timeout):
        return subprocess.run([sys.executable, "-m", "bridge.cli", "separate", str(song), "--model", "dsp", "--out",
                               str(out), "--no-cache", "--device", device, "--scheduler", address],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)

    try:
        worker()  # a CPU worker only
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=90)
        assert separate("cpu", tmp_path / "cpu", 120).returncode == 0
        with pytest.raises(subprocess.TimeoutExpired):  # no worker offers a GPU: the song waits
            separate("cuda", tmp_path / "held", 15)
        worker("--resources", "GPU=1")
        result = separate("cuda", tmp_path / "gpu", 120)
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.strip().splitlines() if "stembridge: " in line]
        assert len(lines) == 1 and "--device cuda: this onnxruntime has no CUDAExecutionProvider" in lines[0]
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_auto_falls_back_to_the_cpu_and_says_why(monkeypatch):
    """auto picks CUDA from this build's list; its libraries do not load: the CPU, with the reason."""
    monkeypatch.setattr(devices, "cuda_library_failure", lambda: "libcublasLt.so.12: cannot open shared object file")
    resolved = devices.check_device("auto", available=CUDA_BUILD)
    assert resolved.device == Device("cpu")
    assert resolved.note.startswith("auto: cuda cannot run (") and "libcublasLt.so.12" in resolved.note
    with pytest.raises(DeviceError, match="libcublasLt"):  # named, it is refused instead
        devices.check_device("cuda", available=CUDA_BUILD)
    monkeypatch.setattr(devices, "cuda_library_failure", lambda: None)
    assert devices.check_device("auto", available=CUDA_BUILD).device == Device("cuda")


def test_a_side_by_side_install_is_one_warning_line_on_a_run(song, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(devices, "installed_runtimes", lambda: ["onnxruntime", "onnxruntime-gpu"])
    assert cli.main(["separate", str(song), "--model", "dsp", "--out", str(tmp_path / "o"), "--no-cache",
                     "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stembridge: warning: {devices.side_by_side_warning(['onnxruntime', 'onnxruntime-gpu'])}"]


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_auto_falls_back_when_the_session_does_not_start(models_dir, monkeypatch):
    """auto chose CUDA but onnxruntime did not start it: the model opens on the CPU and says so;
    named, the same is refused."""
    from bridge import separation

    monkeypatch.setattr(separation.devices, "check_device",
                        lambda asked: devices.Resolved(asked, Device("cuda"), "auto" if asked == "auto" else None))
    sep = load_separator(str(models_dir / "nonlinear.yaml"), device="auto")
    assert sep.device == "cpu" and "did not start its CUDAExecutionProvider" in sep.device_note
    with pytest.raises(DeviceError, match="did not start"):
        load_separator(str(models_dir / "nonlinear.yaml"), device="cuda")
