"""Audio: buffers (checks, layouts, resampling), files (the only module that opens audio files),
partials (outputs written whole or not at all) and loudness (BS.1770 meters).

The floor everything else stands on: it imports nothing of stembridge but :mod:`bridge.errors`.
"""
