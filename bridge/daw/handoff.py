"""What a render hands off besides its audio files, decided once per song before any audio work.

:func:`plan` reads the session's ``output.bwf``, ``output.project``, ``output.project_stems`` and
``output.files.nistems`` and ``output.files.video``, checks what can be checked up front (the
input's timecode, names and collisions, the stems NI Stems needs, a video stream to remux) and returns a :class:`HandOff` that the render's sinks
(:mod:`bridge.render.sinks`) ask: which view of the stems to write (:attr:`HandOff.tap`), what to
add to each WAV before its rename (:meth:`HandOff.finisher`), and where the REAPER project
(built by :func:`session_project` or :func:`separation_project`) and the NI Stems file go.

Stems a project references are written *before the fader* (after the chains for ``processed``,
straight from the separator for ``raw``): the project's tracks carry the gain, pan, mute, solo
and automation, and would apply them twice to stems that already had them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from ..host.automation import Lane
from ..errors import OutputError
from ..preset.templates import expand
from . import bwf, reaper, video
from .nistems import check_stems


#: The project's notes when a track is panned: stembridge's pan law is constant power with unity at
#: the centre (bridge.render.mixer.pan_gains), nearest REAPER's -3 dB law with gain compensation, not its
#: default; the .rpp does not set it (its encoding there is not documented; not checked in REAPER).
PAN_LAW_NOTE = ("Pan law: stembridge pans at constant power with unity at the centre (+3 dB hard-panned); "
                "the closest REAPER setting is Project settings > Pan law -3.0 dB with gain compensation.")


@dataclasses.dataclass(frozen=True)
class HandOff:
    """A song's hand-off plan; see the module docstring.

    Attributes
    ----------
    bwf : bool
        WAV outputs get bext and iXML chunks.
    time_reference : int
        Samples since midnight at the output rate (bext TimeReference).
    project : Path or None
        Where the ``.rpp`` goes.
    tap : {"prefader", "raw"} or None
        The view of the stems written to ``output.files.stems``; None: after the fader, as always.
    nistems : Path or None
        Where the ``.stem.mp4`` goes.
    video : Path or None
        Where the remuxed video goes (``output.files.video``), and ``video_source`` what was
        found in the input.
    tree : Path or None
        The folder that holds the output folder: an input under it is referenced relatively
        by the project (:func:`~bridge.daw.reaper.relative_source`).
    """

    bwf: bool
    time_reference: int
    sample_rate: int
    track: str
    take: str
    model: str
    project: Path | None = None
    tap: str | None = None
    nistems: Path | None = None
    video: Path | None = None
    video_source: video.VideoSource | None = None
    tree: Path | None = None
    #: An ensemble's stems: which model (or method over which models) made each; None for one model.
    made_by: dict | None = None

    def stem_model(self, label: str) -> str:
        """What made output ``label``: the model, or for an ensemble's stem its part."""
        return (self.made_by or {}).get(label, self.model)

    @property
    def taps(self) -> tuple[str, ...]:
        return (self.tap,) if self.tap else ()

    def finisher(self, label: str, path: Path, *, channels: int, bit_depth: int, loudness: bwf.Loudness,
                 kind: str = "render") -> Callable[[Path], None] | None:
        """The hook that adds Broadcast WAV chunks to output ``label`` before its rename, or None."""
        if not self.bwf or path.suffix.lower() != ".wav":
            return None
        what = "mix" if label == "mix" else f"stem {label}" + (f" ({self.tap})" if self.tap else "")
        info = bwf.Broadcast(
            description=f"stembridge {kind}: {what}; model {self.stem_model(label)}; "
                        + (f"preset {self.take}; " if kind == "render" else "") + f"song {self.track}",
            sample_rate=self.sample_rate, channels=channels, time_reference=self.time_reference,
            project=self.track, take=self.take, track_names=bwf.channel_names(label, channels),
            loudness=loudness, bit_depth=None if bit_depth == 32 else bit_depth)
        return lambda partial: bwf.embed(partial, info)


def plan(path: Path, *, header, session, separator_name: str, targets: dict[str, Path], rate: int,
         separator_stems=(), out_dir: Path | None = None, track: str | None = None,
         made_by: dict | None = None) -> HandOff:
    """Decide and check a song's hand-off before rendering it.

    Raises
    ------
    AudioError
        The input's bext TimeReference is past 24 hours.
    OutputError
        The project file would land on a stem, the mix or the input.
    """
    o = session.output
    track = track or path.stem
    reference = bwf.source_time_reference(path, source_rate=header.sample_rate, target_rate=rate) if o.bwf else 0
    stems = {label: target for label, target in targets.items() if label != "mix"}
    project = None
    tree = Path(out_dir).resolve().parent if out_dir is not None else None
    if o.project == "reaper" and stems:
        project = project_path(stems, track=track)
        _check_project(project, targets, path, where=f"{session.source}: output.project", tree=tree)
    nistems = None
    if o.nistems is not None:
        check_stems(tuple(separator_stems), where=f"{session.source}: output.files.nistems")
        nistems = expand(o.nistems, Path(out_dir), track=track, stem="mix", ext="stem.mp4", model=separator_name)
        for label, target in {**targets, "project": project}.items():
            if nistems == target:
                raise OutputError(f"{session.source}: output.files.nistems: {nistems} is also the {label} output; "
                                  "give the NI Stems file its own name")
    found, movie = None, None
    if o.video is not None:
        where = f"{session.source}: output.files.video"
        found = video.check_source(path, where=where, stream=session.input.stream)
        movie = expand(o.video, Path(out_dir), track=track, stem="mix", ext=found.extension.lstrip("."),
                       model=separator_name)
        for label, target in {**targets, "project": project, "nistems": nistems, "input": path.resolve()}.items():
            if movie == target:
                raise OutputError(f"{where}: {movie} is also the {label}; give the video output its own name "
                                  "(e.g. \"{track}.remix.{ext}\")")
    tap = None
    if project is not None:
        tap = "raw" if o.project_stems == "raw" else "prefader"
    take = Path(session.source).stem if session.source not in ("<session>", "") else "session"
    return HandOff(bwf=o.bwf, time_reference=reference, sample_rate=rate, track=track, take=take,
                   model=separator_name, project=project, tap=tap, nistems=nistems, video=movie, video_source=found,
                   tree=tree, made_by=made_by)


def separation_plan(path: Path, *, header, options, separator_name: str, targets: dict[str, Path],
                    track: str | None = None, made_by: dict | None = None) -> HandOff:
    """:func:`plan` for :func:`bridge.render.separate.separate_file` (no session: its options instead)."""
    rate = header.sample_rate
    track = track or path.stem
    reference = bwf.source_time_reference(path, source_rate=rate, target_rate=rate) if options.bwf else 0
    project = project_path(targets, track=track) if options.project == "reaper" else None
    tree = Path(options.out_dir).resolve().parent
    if project is not None:
        _check_project(project, targets, path, where="--project", tree=tree)
    return HandOff(bwf=options.bwf, time_reference=reference, sample_rate=rate, track=track, take="separate",
                   model=separator_name, project=project, tree=tree, made_by=made_by)


def _check_project(project: Path, targets: dict[str, Path], source: Path, *, where: str,
                   tree: Path | None = None) -> None:
    for label, target in targets.items():
        if project == target:
            what = "mix" if label == "mix" else f"stem {label}"
            raise OutputError(f"{where}: the REAPER project {project} would be written over the {what} file; "
                              "change the output names so they differ")
    if project == source.resolve() or (project.exists() and project.samefile(source)):
        raise OutputError(f"{where}: the REAPER project {project} would overwrite the input; choose another output folder")
    if project.is_dir():
        raise OutputError(f"{where}: the REAPER project {project} is the name of a folder; remove or rename it")
    # Every name the project will hold must be one REAPER can read: refuse now, before any audio work.
    reaper.quote(reaper.relative_source(source, project, tree=tree), what=f"{where}: the input's path")
    for label, target in targets.items():
        reaper.quote(label, what=f"{where}: the stem name")
        reaper.quote(reaper.relative_source(target, project), what=f"{where}: the file name")


def project_path(stems: dict[str, Path], *, track: str) -> Path:
    """``<track>.rpp`` in the folder that holds every stem file."""
    folders = [p.parent for p in stems.values()]
    common = folders[0]
    while not all(common == f or common in f.parents for f in folders):
        common = common.parent
    return common / f"{track}.rpp"


def session_project(handoff: HandOff, *, session, source: Path, source_seconds: float, files: dict[str, Path],
                    frames: dict[str, int], channels: dict[str, int], layout_channels: int) -> reaper.Project:
    """The REAPER project of a rendered song: a muted reference track, then one track per stem
    (layers included), the session's tempo and time signature.

    A stem's gain is its ``automation:`` lane on ``stems.NAME.gain_db`` if it has one (the lane
    replaces a constant ``gain_db``, as in :class:`bridge.render.mixer.Mixer`; a preset cannot give both
    a lane and ``gain_db`` breakpoints), else its ``gain_db`` breakpoints, else the constant; the
    same for pan. Lanes become envelopes (:func:`bridge.daw.reaper.gain_envelope`), the fader
    stays at unity. What REAPER cannot redo on its own tracks is in the stem files
    (``processed``: chains, their parameter lanes, ducking; in 5.1 also the pan and its lane,
    which come before the routing) or listed in the track's notes (``raw``).
    """
    project = handoff.project
    tracks = [reaper.Track(name="original mix (reference)",
                           file=reaper.relative_source(source, project, tree=handoff.tree),
                           length=source_seconds, channels=2, mute=True,
                           notes="The input song, muted: the reference the stems came from.")]
    from ..preset.session import DEFAULT_ROLES  # here: the session module brings the effects host

    surround = layout_channels == 6
    for stem, file in files.items():
        s = session.stem(stem)
        lanes = session.lanes("stems", stem)
        mix_lanes = dict(lanes.mix)
        gain_lane = mix_lanes.get("gain_db")
        if gain_lane is None and not isinstance(s.gain_db, (int, float)):
            gain_lane = Lane(tuple(t for t, _ in s.gain_db), tuple(db for _, db in s.gain_db), "linear")
        # New REAPER tracks are in trim/read mode, where the fader scales the envelope: with an
        # envelope the fader stays at unity so the gain is applied once.
        volume = 1.0 if gain_lane is not None else 10 ** (s.gain_db / 20)
        # In 5.1 the pan (and its lane) comes before the routing and is in the file (Mixer.prefader).
        pan_in_file = surround and handoff.tap == "prefader"
        pan_lane = None if pan_in_file else mix_lanes.get("pan")
        pan = 0.0 if pan_in_file or pan_lane is not None else s.pan
        notes = _stem_notes(s, lanes.effects, tap=handoff.tap,
                            role=(s.upmix or DEFAULT_ROLES.get(stem, "ambience")) if surround else None,
                            pan_lane=mix_lanes.get("pan") if pan_in_file else None)
        if handoff.made_by and stem in handoff.made_by:
            notes.insert(0, f"Separated by {handoff.made_by[stem]}")
        tracks.append(reaper.Track(
            name=stem, file=reaper.relative_source(file, project), length=frames[stem] / handoff.sample_rate,
            channels=channels[stem] if channels[stem] > 2 else 2, volume=volume, pan=pan, mute=s.mute, solo=s.solo,
            invert=s.invert, volume_envelope=reaper.gain_envelope(gain_lane) if gain_lane is not None else (),
            pan_envelope=reaper.pan_envelope(pan_lane) if pan_lane is not None else (), notes="\n".join(notes)))
    notes = [f"stembridge: {session.source}, song {source.name}, model {handoff.model}"]
    if handoff.made_by:
        notes.append("Stems by: " + "; ".join(f"{stem} {who}" for stem, who in handoff.made_by.items()))
    if any(t.pan or t.pan_envelope for t in tracks):
        notes.append(PAN_LAW_NOTE)
    if session.pre:
        notes.append("Every stem is after the pre chain (before separation): "
                     + _chain_text(session.pre, session.lanes("pre").effects))
    if session.master:
        notes.append("Not in this project (the mix file has it): the master chain "
                     + _chain_text(session.master, session.lanes("master").effects))
    tempo = session.tempo
    return reaper.Project(sample_rate=handoff.sample_rate, tracks=tuple(tracks), channels=layout_channels,
                          tempo=reaper.Tempo(bpm=tempo.bpm, numerator=tempo.beats_per_bar,
                                             denominator=tempo.beat_unit) if tempo is not None else None,
                          notes="\n".join(notes))


def _stem_notes(s, chain_lanes: dict, *, tap: str | None, role: str | None, pan_lane) -> list[str]:
    """A track's notes: what stembridge did to the stem that the track cannot show."""
    notes = []
    automated = [f"chain[{i}].{param}: {describe_lane(lane)}" for i, pairs in sorted(chain_lanes.items())
                 for param, lane in pairs]
    if tap == "raw":
        if s.chain:
            notes.append("stembridge applied these effects in the session (this stem is before them):")
            notes += [f"{i + 1}. {_describe(effect)}" for i, effect in enumerate(s.chain)]
        if automated:
            notes.append("with this automation (not REAPER envelopes: these effects are not REAPER's):")
            notes += [f"- {line}" for line in automated]
        if s.duck is not None:
            notes.append(f"then ducked: {_describe_duck(s.duck)} (a sidechain compressor keyed by that track "
                         "redoes it)")
        if role is not None:
            notes.append(f"5.1: this raw stereo stem plays on the front pair; stembridge routed it to the {role} role")
        return notes
    if tap == "prefader":
        if s.chain:
            notes.append("This stem is after its chain: " + ", ".join(_describe(e) for e in s.chain))
        if automated:
            notes.append("Its automation is in the file: " + "; ".join(automated))
        if s.duck is not None:
            notes.append(f"Ducking is in the file: {_describe_duck(s.duck)}")
        if role is not None and (s.pan or pan_lane is not None):
            what = f"The pan lane ({describe_lane(pan_lane)})" if pan_lane is not None else f"pan {s.pan:+g}"
            notes.append(f"{what} is applied in the file, before the 5.1 routing")
    return notes


def describe_lane(lane) -> str:
    """One line for a lane: where its points come from, how many, when, and their range."""
    if lane.source is not None:
        src = lane.source
        what = f"CC {src.number}" if src.kind == "cc" else src.kind
        where = f" channel {src.channel}" if src.channel is not None else ""
        origin = f"MIDI {src.path} {what}{where} -> [{src.value_range[0]:g}, {src.value_range[1]:g}], "
    else:
        origin = ""
    span = f"{lane.times[0]:g} s" if len(lane.times) == 1 else f"{lane.times[0]:g} s to {lane.times[-1]:g} s"
    return (f"{origin}{lane.curve}, {len(lane.times)} point{'s' if len(lane.times) != 1 else ''} {span}, "
            f"values {lane.minimum:g} to {lane.maximum:g}")


def _describe_duck(duck) -> str:
    return (f"by {duck.by}, depth {duck.depth_db:g} dB, threshold {duck.threshold_db:g} dB, "
            f"attack {duck.attack_ms:g} ms, release {duck.release_ms:g} ms")


def _chain_text(chain, lanes: dict) -> str:
    text = ", ".join(_describe(e) for e in chain)
    automated = [f"[{i}].{param}: {describe_lane(lane)}" for i, pairs in sorted(lanes.items()) if i is not None
                 for param, lane in pairs]
    return text + (f" (automation: {'; '.join(automated)})" if automated else "")


def separation_project(project: Path, *, source: Path, source_seconds: float, files: dict[str, Path],
                       frames: dict[str, int], channels: int, sample_rate: int, model: str,
                       tree: Path | None = None, made_by: dict | None = None) -> reaper.Project:
    """The REAPER project of a plain separation: the reference track, then each stem at unity."""
    tracks = [reaper.Track(name="original mix (reference)", file=reaper.relative_source(source, project, tree=tree),
                           length=source_seconds, channels=2, mute=True)]
    made_by = made_by or {}
    tracks += [reaper.Track(name=stem, file=reaper.relative_source(file, project), length=frames[stem] / sample_rate,
                            channels=2, **({"notes": f"Separated by {made_by[stem]}"} if stem in made_by else {}))
               for stem, file in files.items()]
    notes = f"stembridge separate: song {source.name}, model {model}"
    if made_by:
        notes += "\nStems by: " + "; ".join(f"{stem} {who}" for stem, who in made_by.items())
    return reaper.Project(sample_rate=sample_rate, tracks=tuple(tracks), channels=max(2, channels), notes=notes)


def _describe(effect) -> str:
    params = ", ".join(f"{k}={v}" for k, v in effect.params)
    name = effect.name if effect.kind == "builtin" else f"VST3 {effect.name}"
    return f"{name}({params})" if params else name
