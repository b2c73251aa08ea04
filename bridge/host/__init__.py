"""The plugin host: VST3 lookup and channel adaptation (:mod:`.plugins`), effect specs <-> plugins
(:mod:`.effects`), automation lanes, MIDI files, instrument layers and sidechain ducking.

It hosts plugins and knows nothing of presets, separators or files on disk beyond plugin bundles.
"""
