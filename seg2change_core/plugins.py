"""Plugins: the modules installed packages declare under an entry-point group, imported once.

Importing such a module registers what it defines (a change-model kind, a publisher), so a job can
name it with no code of the user's imported. Every registry with an entry-point group loads it
through one :class:`PluginGroup`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

__all__ = ["PluginGroup"]


@dataclass
class PluginGroup:
    """One entry-point group of plugin modules, imported the first time a registry misses a name.

    Attributes
    ----------
    group
        The entry-point group, e.g. ``"seg2change.publishers"``.
    what
        What its plugins register, for messages (``"publisher"``).
    error
        The exception raised when a declared module fails to import.
    loaded
        Whether the group was imported already (each group is imported at most once).
    """

    group: str
    what: str
    error: type[Exception]
    loaded: bool = False

    def load(self) -> None:
        """Import every module the group declares, once.

        Raises
        ------
        Exception
            ``error``, naming the entry point, when its module fails to import.
        """
        if self.loaded:
            return
        self.loaded = True
        for point in entry_points(group=self.group):
            try:
                point.load()
            except Exception as exc:
                raise self.error(
                    f"the {self.what} entry point {point.name!r} ({point.value}) of group {self.group} "
                    f"failed to load ({type(exc).__name__}: {exc}); fix or uninstall the package that "
                    "declares it"
                ) from exc
