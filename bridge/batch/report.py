"""``OUT/stembridge-report.html``: the run for people, one self-contained file.

The run (songs rendered, from cache, up to date, failed; wall time, real-time factor, models
and devices; each failure's error), then an album view (one row per song: loudness and true
peak against the target), then per song its outputs' levels (integrated loudness, true peak,
loudness range, clipped samples), the album gain where album loudness was used, the pictures
:mod:`bridge.render.preview` drew (stacked waveforms on one time axis, spectrograms) and an
audio player per output file.

Self-contained: the pictures are PNG and JPEG data URIs and the page has no script, no font or style
sheet from elsewhere, so it opens offline. The players link the outputs by paths relative to
the report, so the folder can be moved or shared whole. Written once, atomically, at the end
of the run (:func:`write_report`), as ``stembridge-run.json`` is; it shows what that record
holds.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from urllib.parse import quote

from ..audio import partials
from ..version import __version__

#: The report's file name in the output folder.
REPORT_NAME = "stembridge-report.html"

_STATUS = {"rendered": "rendered", "cached": "rendered from cached stems", "skipped": "up to date (skipped)",
           "failed": "failed", "measured": "measured"}

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1180px;
padding:0 16px;color:#1a202c;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e2e8f0;
padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px}th,td{padding:3px 10px;text-align:left;
border-bottom:1px solid #edf2f7;vertical-align:top}th{background:#f7fafc;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#c53030;font-weight:600}.ok{color:#2f855a}.muted{color:#718096}
.error{background:#fff5f5;border-left:3px solid #c53030;padding:4px 8px;margin:4px 0;font-family:monospace;
white-space:pre-wrap;word-break:break-word}
img{max-width:100%;height:auto;display:block;margin:6px 0}audio{height:32px;vertical-align:middle}
section.song{margin-bottom:28px}
"""


def write_report(report, out_dir, *, kind: str, target: dict | None = None) -> Path:
    """Write the run's HTML report to ``out_dir / REPORT_NAME`` atomically.

    Parameters
    ----------
    report : RunReport
        The run (its outcomes carry each song's :class:`~bridge.render.preview.SongPreview`).
    kind : str
        ``render`` or ``separate``.
    target : dict, optional
        ``{"loudness_lufs": ..., "true_peak_db": ..., "scope": ...}`` of a render's preset
        (None: no loudness target).
    """
    out_dir = Path(out_dir)
    return partials.write_text_atomic(out_dir / REPORT_NAME, render_html(report, out_dir, kind=kind, target=target),
                                      what="report")


def render_html(report, out_dir: Path, *, kind: str, target: dict | None = None) -> str:
    record = report.record()
    songs = [_song_facts(o, out_dir) for o in report.outcomes]
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
             f"<title>stembridge report: {_e(out_dir.name or str(out_dir))}</title><style>{_STYLE}</style></head><body>",
             f"<h1>stembridge {_e(kind)} report</h1>",
             f"<p class=\"muted\">{_e(str(out_dir))} &middot; stembridge {_e(__version__)}</p>",
             _overview(report, record, songs, kind), _album(songs, target)]
    parts += [_song_section(i, s) for i, s in enumerate(songs)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _song_facts(outcome, out_dir: Path) -> dict:
    """One song as the report shows it: outcome, levels (from the preview, or from the manifest of
    a song that was up to date), pictures and links."""
    preview = outcome.preview
    outputs = []
    if preview is not None:
        outputs = [dict(label=o.label, path=Path(o.path), loudness=o.loudness_lufs, true_peak=o.true_peak_dbtp,
                        lra=o.loudness_range_lu, clipped=o.clipped_samples) for o in preview.outputs]
        gain = preview.gain
    else:
        gain = None
        stats = _manifest(outcome.written.get("manifest"))
        if stats is not None:
            gain = stats.get("loudness")
        for label, path in outcome.written.items():
            if label in ("manifest", "project"):  # not audio: nothing to play or measure
                continue
            o = (stats or {}).get("outputs", {}).get(label, {})
            outputs.append(dict(label=label, path=Path(path), loudness=o.get("loudness_lufs"),
                                true_peak=o.get("true_peak_dbtp"), lra=None, clipped=o.get("clipped_samples")))
    for o in outputs:
        o["href"] = _href(o["path"], out_dir)
    return {"name": outcome.path.name, "input": str(outcome.path), "status": outcome.status, "error": outcome.error,
            "seconds": outcome.seconds, "wall": outcome.wall, "device": outcome.device, "model": outcome.model,
            "outputs": outputs, "gain": gain, "preview": preview}


def _manifest(path) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _href(path: Path, out_dir: Path) -> str:
    """A link to ``path`` relative to the report (percent-encoded, forward slashes)."""
    try:
        rel = os.path.relpath(Path(path).resolve(), out_dir.resolve())
    except ValueError:  # another drive (Windows): only an absolute link can reach it
        return Path(path).resolve().as_uri()
    return quote(Path(rel).as_posix())


def _overview(report, record: dict, songs: list[dict], kind: str) -> str:
    counts = record["counts"]
    rtf = record["realtime_factor"]
    models = list(dict.fromkeys(s["model"] for s in songs if s["model"]))
    devices = record["devices"]
    rows = [("songs", str(len(songs))), ("rendered", str(counts["rendered"])),
            ("from cached stems", str(counts["cached"])), ("up to date (skipped)", str(counts["skipped"])),
            ("failed", str(counts["failed"])), ("wall time", f"{record['wall_seconds']:.1f} s"),
            ("audio rendered", _clock(record["audio_seconds"])),
            ("real-time factor", f"{rtf:.1f}x" if rtf else "&ndash;"),
            ("models", ", ".join(_e(m) for m in models) or "&ndash;"),
            ("devices", ", ".join(_e(d) for d in devices) or "&ndash;")]
    drawn = [s["preview"].draw_seconds for s in songs if s["preview"] is not None]
    if drawn:
        rows.append(("report pictures", f"{sum(drawn):.1f} s CPU for {len(drawn)} song{'s' if len(drawn) != 1 else ''}"))
    body = "".join(f"<tr><th>{k}</th><td class=\"n\" data-key=\"{_e(k)}\">{v}</td></tr>" for k, v in rows)
    out = [f"<h2>Run</h2><table class=\"run\">{body}</table>"]
    if report.device_note:
        out.append(f"<p class=\"muted\">model device: {_e(report.device_note)}</p>")
    for note in report.notes:
        out.append(f"<p class=\"muted\">note: {_e(note)}</p>")
    failed = [s for s in songs if s["status"] == "failed"]
    if failed:
        out.append("<h3>Failures</h3>")
        out += [f"<div class=\"error\">{_e(s['error'] or s['input'])}</div>" for s in failed]
    return "\n".join(out)


def _album(songs: list[dict], target: dict | None) -> str:
    """One row per song: the mix's (or the loudest output's) loudness and true peak against the target."""
    lufs = target.get("loudness_lufs") if target else None
    ceiling = target.get("true_peak_db") if target else None
    head = ("<tr><th>song</th><th>status</th><th>output</th><th class=\"n\">loudness (LUFS)</th>"
            + (f"<th class=\"n\">vs target {lufs:g}</th>" if lufs is not None else "")
            + "<th class=\"n\">true peak (dBTP)</th>"
            + (f"<th class=\"n\">vs ceiling {ceiling:g}</th>" if ceiling is not None and lufs is not None else "")
            + "<th class=\"n\">clipped samples</th><th class=\"n\">gain (dB)</th></tr>")
    rows = []
    for i, s in enumerate(songs):
        main = _main_output(s["outputs"])
        loud = main["loudness"] if main else None
        peak = main["true_peak"] if main else None
        clipped = sum(o["clipped"] or 0 for o in s["outputs"])
        gain = (s["gain"] or {}).get("gain_db")
        cells = [f"<td><a href=\"#song-{i}\">{_e(s['name'])}</a></td>", f"<td>{_status(s['status'])}</td>",
                 f"<td>{_e(main['label']) if main else '&ndash;'}</td>", f"<td class=\"n\">{_num(loud)}</td>"]
        if lufs is not None:
            cells.append(f"<td class=\"n\">{_num(None if loud is None else loud - lufs, signed=True)}</td>")
        over = peak is not None and ceiling is not None and peak > ceiling + 0.05
        cells.append(f"<td class=\"n{' bad' if over or (peak is not None and peak > 0) else ''}\">{_num(peak)}</td>")
        if ceiling is not None and lufs is not None:
            cells.append(f"<td class=\"n\">{_num(None if peak is None else peak - ceiling, signed=True)}</td>")
        cells.append(f"<td class=\"n{' bad' if clipped else ''}\">{clipped if s['outputs'] else '&ndash;'}</td>")
        cells.append(f"<td class=\"n\">{_num(gain, signed=True)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    scope = f", {target.get('scope')} scope" if target and target.get("scope") and lufs is not None else ""
    caption = (f"target {lufs:g} LUFS, true-peak ceiling {ceiling:g} dBTP{scope}" if lufs is not None
               else "no loudness target")
    return (f"<h2>Album</h2><p class=\"muted\">{_e(caption)}; the mix, or the loudest output where there is "
            f"no mix</p><table class=\"album\">{head}{''.join(rows)}</table>")


def _main_output(outputs: list[dict]) -> dict | None:
    if not outputs:
        return None
    mix = next((o for o in outputs if o["label"] == "mix"), None)
    if mix is not None:
        return mix
    measured = [o for o in outputs if o["loudness"] is not None]
    return max(measured, key=lambda o: o["loudness"]) if measured else outputs[0]


def _song_section(index: int, s: dict) -> str:
    out = [f"<section class=\"song\" id=\"song-{index}\"><h2>{_e(s['name'])}</h2>",
           f"<p>{_status(s['status'])} &middot; {_clock(s['seconds'])} of audio"
           + (f" &middot; {s['wall']:.1f} s" if s["wall"] else "")
           + (f" &middot; model {_e(s['model'])}" if s["model"] else "")
           + (f" on {_e(s['device'])}" if s["device"] else "") + f"<br><span class=\"muted\">{_e(s['input'])}</span></p>"]
    if s["error"]:
        out.append(f"<div class=\"error\">{_e(s['error'])}</div>")
    gain = s["gain"]
    if gain:
        album = gain.get("album")
        line = f"loudness gain {_num(gain.get('gain_db'), signed=True)} dB ({_e(str(gain.get('scope', 'track')))} scope"
        if album:
            line += (f"; album {_e(str(album.get('folder', '')))}: {_num(album.get('loudness_lufs'))} LUFS, "
                     f"true peak {_num(album.get('true_peak_dbtp'))} dBTP, album gain "
                     f"{_num(album.get('gain_db'), signed=True)} dB")
        out.append(f"<p class=\"gain\">{line})</p>")
    if s["outputs"]:
        rows = "".join(
            f"<tr><td>{_e(o['label'])}</td><td><a href=\"{_e(o['href'])}\">{_e(o['path'].name)}</a></td>"
            f"<td class=\"n\">{_num(o['loudness'])}</td><td class=\"n{' bad' if (o['true_peak'] or -1) > 0 else ''}\">"
            f"{_num(o['true_peak'])}</td><td class=\"n\">{_num(o['lra'])}</td>"
            f"<td class=\"n{' bad' if o['clipped'] else ''}\">{'&ndash;' if o['clipped'] is None else o['clipped']}</td>"
            f"<td><audio controls preload=\"none\" src=\"{_e(o['href'])}\"></audio></td></tr>"
            for o in s["outputs"])
        out.append("<table class=\"outputs\"><tr><th>output</th><th>file</th><th class=\"n\">loudness (LUFS)</th>"
                   "<th class=\"n\">true peak (dBTP)</th><th class=\"n\">loudness range (LU)</th>"
                   f"<th class=\"n\">clipped samples</th><th>listen</th></tr>{rows}</table>")
    preview = s["preview"]
    if preview is not None:
        for title, mime, data in (("Waveforms", "image/png", preview.waveforms_png),
                                  ("Spectrograms", "image/jpeg", preview.spectrograms_jpeg)):
            if data:
                out.append(f"<h3>{title}</h3><img alt=\"{title.lower()} of {_e(s['name'])}\" "
                           f"src=\"data:{mime};base64,{base64.b64encode(data).decode('ascii')}\">")
    elif s["status"] == "skipped":
        out.append("<p class=\"muted\">Up to date, so not rendered in this run: the pictures are drawn when a song "
                   "is rendered (--force renders it again).</p>")
    out.append("</section>")
    return "\n".join(out)


def _status(status: str) -> str:
    text = _e(_STATUS.get(status, status))
    return f"<span class=\"bad\">{text}</span>" if status == "failed" else f"<span class=\"ok\">{text}</span>"


def _num(value, *, signed: bool = False) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _clock(seconds: float) -> str:
    total = int(round(seconds or 0))
    return f"{total // 60}:{total % 60:02d}"


def _e(text) -> str:
    return html.escape(str(text), quote=True)
