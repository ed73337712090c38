"""setseq: Set-and-Sequence personalization of text-to-video DiTs to dynamic concepts."""

__version__ = "0.1.0"
