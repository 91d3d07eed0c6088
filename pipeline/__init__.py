"""pipeline: the large-area engine (job spec, discovery, cube assembly, inference, publishing)."""

from seg2change_core import __version__

__all__ = ["__version__"]
