"""Separation quality: BSS Eval v4 SDR and SI-SDR against reference songs (:mod:`.evaluate`), and
the reference folders themselves (:mod:`.references`).
"""
