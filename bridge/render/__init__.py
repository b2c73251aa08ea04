"""Rendering: the graph and the stem mixer, one song through them into its outputs (:mod:`.song`),
stems-only separation (:mod:`.separate`), the stem cache, and the records a run leaves (manifests,
resume records).
"""
