"""The package version, in one place below everything that records it (manifests, cards, DAW files)."""

__version__ = "0.1.0"
