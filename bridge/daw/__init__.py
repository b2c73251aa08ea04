"""Hand-off writers for other software: Broadcast WAV chunks (:mod:`.bwf`), REAPER projects
(:mod:`.reaper`) and NI Stems files (:mod:`.nistems`).

They sit above :mod:`bridge.audio.files` and below :mod:`bridge.render.song`, which calls them once a song's
outputs are known; nothing here separates or mixes audio.
"""
