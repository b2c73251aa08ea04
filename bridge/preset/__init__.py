"""Presets: a YAML session (:mod:`.session`) read safely (:mod:`.safeyaml`), every value checked
with its preset key (:mod:`.fields`), and output-name templates (:mod:`.templates`).
"""
