"""What keeps ``stembridge models import`` under 4 GB at the published sizes (issue 26), checked
structurally at reduced sizes: the importers fix glibc's ``mmap`` threshold before they read the
checkpoint (:mod:`bridge.memory`), and no torch network the import built is alive when
an onnxruntime session opens for the parity check. The figures at the published sizes are
``tests/benchmarks/imports.py``'s (README, "Import memory"); no timing or memory is measured here.

The spies below call through: the real importer, torch export and onnxruntime sessions run.
"""

from __future__ import annotations

import weakref

import pytest

from conftest import TORCH, need_module

torch = need_module("torch", TORCH)

import onnxruntime as ort  # noqa: E402

from bridge.importers import demucs as demucs_importer  # noqa: E402
from bridge import memory  # noqa: E402
from bridge.importers import roformer as roformer_importer  # noqa: E402


class Watch:
    """Records, in order, when the mmap threshold is set, when the checkpoint is read, each network
    built (as a weak reference) and, for each onnxruntime session opened, which networks were alive."""

    def __init__(self, monkeypatch, importer, reader: str):
        self.events: list[str] = []
        self.nets: list[weakref.ref] = []
        self.alive_at_sessions: list[list[bool]] = []
        watch = self

        def spy(name, record):
            real = getattr(importer if name != "return_freed_memory" else memory, name)

            def call(*args, **kwargs):
                result = real(*args, **kwargs)
                record(result)
                return result
            monkeypatch.setattr(importer if name != "return_freed_memory" else memory, name, call)

        spy("return_freed_memory", lambda set_: self.events.append(f"threshold set: {set_}"))
        spy(reader, lambda _: self.events.append("checkpoint read"))
        spy("build_network", lambda net: (self.nets.append(weakref.ref(net)), self.events.append("built")))

        class Session(ort.InferenceSession):
            def __init__(self, *args, **kwargs):
                watch.alive_at_sessions.append([ref() is not None for ref in watch.nets])
                watch.events.append("session")
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(ort, "InferenceSession", Session)

    def check(self, networks: int):
        assert self.events[0] == "threshold set: True", self.events  # glibc (Linux CI); first, before any read
        assert self.events.count("built") == networks and len(self.alive_at_sessions) >= networks, self.events
        # Every session opened after the network it checks was built, with no network alive.
        assert all(not any(alive) and alive for alive in self.alive_at_sessions), self.alive_at_sessions


def test_a_roformer_import_frees_the_network_before_the_onnx_session(tmp_path, monkeypatch):
    from test_roformer_import import BS_CONFIG, _checkpoint

    ckpt, config = _checkpoint(tmp_path, BS_CONFIG, seed=26)
    watch = Watch(monkeypatch, roformer_importer, "read_state_dict")
    result = roformer_importer.import_roformer(ckpt, config=config, name="tiny", folder=tmp_path / "models")
    watch.check(networks=1)
    assert result.parity_db >= roformer_importer.MIN_PARITY_DB


def test_a_demucs_bag_import_frees_each_network_before_its_onnx_session(tmp_path, monkeypatch):
    pytest.importorskip("demucs")
    import demucs_models as dm

    repo, _ = dm.shared_repo()
    watch = Watch(monkeypatch, demucs_importer, "read_package")
    result = demucs_importer.import_demucs(repo / "tiny_ft.yaml", name="tiny_ft", folder=tmp_path / "models")
    watch.check(networks=2)
    assert watch.events.count("checkpoint read") == 2 and result.parity_db >= roformer_importer.MIN_PARITY_DB
