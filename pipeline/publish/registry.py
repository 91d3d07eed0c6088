"""Publishers: the Protocol every output format follows, and a registry of them.

A publisher turns a finished change cube into files: it is given a :class:`PublishContext` (the
change cube's description, the job, the provenance, the zones, the input cube and the folder to
write into) and returns the :class:`Artifact` s it wrote. :func:`pipeline.publish.publish` runs the
publishers a job names (``JobSpec.publishers``), in that order; four are built in
(:mod:`pipeline.publish.publishers`), the default set:

``"cog"``
    COGs of the change cube's main layers, and the category names beside the coded ones.
``"statistics"``
    Changed area per target class and transition, per zone, as Parquet and JSON.
``"quicklook"``
    The quick-look PNG (needs ``"statistics"``: its legend gives each transition's area).
``"stac"``
    The STAC Collection and Item describing the change cube and every file of the publishers
    listed before it; list it last.

A publisher of one's own is a class (or a factory without arguments) registered under its name;
registering it before the job is built makes the name valid in a job::

    from pipeline.publish import Artifact, PublishContext, register_publisher

    @register_publisher("changed_pixels")
    class ChangedPixels:
        name = "changed_pixels"
        needs = ()

        def publish(self, context: PublishContext) -> list[Artifact]:
            path = context.local / "changed_pixels.csv"
            ...  # read context.info.path, write path
            return [Artifact("changed_pixels", path, "text/csv", ("metadata",), "changed pixels")]

The module that registers it must be imported where the job is built and where it is published;
an installed package may instead declare the module as an entry point of the group
``seg2change.publishers`` (:data:`ENTRY_POINT_GROUP`), which the registry loads the first time a
name is unknown, so ``seg2change run`` finds its publishers with no code of the user's imported.

A publisher starts once the publishers it :attr:`~Publisher.needs` have finished and runs beside
the others (the COGs, in threads of their own, overlap the statistics and the quick-look).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from pipeline.change_cube import ChangeCubeInfo
from pipeline.errors import PublishError
from pipeline.publish.zones import Zone
from pipeline.spec import DEFAULT_PUBLISHERS
from pipeline.storage import Location
from seg2change_core.plugins import PluginGroup

__all__ = [
    "ALL_EARLIER",
    "DEFAULT_PUBLISHERS",
    "ENTRY_POINT_GROUP",
    "PLUGINS",
    "Artifact",
    "PublishContext",
    "Publisher",
    "available_publishers",
    "get_publisher",
    "needed_by",
    "register_publisher",
    "resolve_publishers",
]

#: Entry-point group under which installed packages declare modules that register publishers.
ENTRY_POINT_GROUP = "seg2change.publishers"

#: The installed packages' publishers, imported on the first unknown name.
PLUGINS = PluginGroup(ENTRY_POINT_GROUP, "publisher", PublishError)
#: In :attr:`Publisher.needs`: every publisher listed before this one (the STAC, which describes them).
ALL_EARLIER = "*"


@dataclass(frozen=True)
class Artifact:
    """A file a publisher wrote, as the STAC describes it.

    Attributes
    ----------
    key
        Its name among all the job's files, unique (the STAC asset key).
    path
        The file, inside :attr:`PublishContext.local`.
    media_type
        Its media type (``"text/csv"``, ``"image/png"``...).
    roles
        STAC roles (``data``, ``overview``, ``metadata``...).
    title
        Short title.
    fields
        More STAC asset fields (``nodata``, ``data_type``...).
    value
        What the file was written from, for the publishers after this one and for the caller (the
        statistics' :class:`~pipeline.publish.statistics.ChangeStatistics`, a
        :class:`~pipeline.publish.cogs.CogLayer`...); None if nothing.
    """

    key: str
    path: Path
    media_type: str
    roles: tuple[str, ...]
    title: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    value: Any = field(default=None, repr=False, compare=False)


def _no_progress(stage: str, done: int, total: int) -> None:
    """Draw nothing."""


@dataclass(frozen=True)
class PublishContext:
    """What a publisher is given.

    Attributes
    ----------
    info
        The finished change cube (:func:`~pipeline.change_cube.describe_change_cube`).
    job
        The job, as JSON-ready data (``JobSpec.model_dump(mode="json")``).
    provenance
        The discovery record (``Discovery.provenance()``): the input items.
    zones
        Zones for per-zone figures, in the grid's CRS (may be empty).
    input_cube
        The input cube the change cube was computed from.
    out
        The output folder, local or an fsspec URL.
    local
        The local folder to write into, laid out like ``out``: ``out`` itself when it is local,
        else a temporary folder whose files are uploaded once every publisher has finished.
    progress
        ``progress(stage, done, total)`` draws a progress bar per stage.
    earlier
        The artifacts of the publishers this one needs, per publisher name, in job order.
    """

    info: ChangeCubeInfo
    job: Mapping[str, Any]
    provenance: Mapping[str, Any]
    zones: tuple[Zone, ...]
    input_cube: Location
    out: Location
    local: Path
    progress: Callable[[str, int, int], None] = _no_progress
    earlier: Mapping[str, tuple[Artifact, ...]] = field(default_factory=dict)

    def published(self, path: Path) -> Location:
        """Where the file ``path`` (inside :attr:`local`) is published."""
        return self.out.join(path.relative_to(self.local).as_posix())

    def source(self, path: Path) -> Path | None:
        """The local file whose bytes are uploaded to :meth:`published`, or None when ``out`` is local."""
        return None if self.out.is_local else path

    def artifacts(self, publisher: str) -> tuple[Artifact, ...]:
        """The artifacts of the publisher named ``publisher``, which this one must need.

        Raises
        ------
        PublishError
            When ``publisher`` is not among those this one needs.
        """
        try:
            return self.earlier[publisher]
        except KeyError:
            raise PublishError(
                f"no artifacts of publisher {publisher!r} here (given: {', '.join(self.earlier) or 'none'}); "
                "name it in the publisher's needs"
            ) from None

    def value(self, publisher: str, key: str) -> Any:
        """The :attr:`Artifact.value` of the artifact ``key`` of the publisher ``publisher``."""
        for artifact in self.artifacts(publisher):
            if artifact.key == key:
                return artifact.value
        raise PublishError(f"publisher {publisher!r} wrote no artifact {key!r}")


@runtime_checkable
class Publisher(Protocol):
    """What :func:`pipeline.publish.publish` needs from an output format.

    Attributes
    ----------
    name
        Registry name, as a job names it (``"cog"``, ``"statistics"``...).
    needs
        Names of the publishers whose artifacts this one reads (:meth:`PublishContext.artifacts`):
        they must be listed before it in the job, and it starts once they have finished.
        :data:`ALL_EARLIER` stands for every publisher listed before it.
    """

    name: str
    needs: tuple[str, ...]

    def publish(self, context: PublishContext) -> Sequence[Artifact]:
        """Write this publisher's files into ``context.local`` and return them.

        Each file is best written under a temporary name and renamed into place
        (:func:`pipeline.storage.replace_atomically`), so a failure leaves the earlier file as it was.

        Parameters
        ----------
        context
            The change cube, the job and where to write.

        Returns
        -------
        sequence of Artifact
            The files written, in the order the STAC lists them.
        """
        ...


P = TypeVar("P", bound=Callable[[], Publisher])

_REGISTRY: dict[str, Callable[[], Publisher]] = {}


def register_publisher(name: str) -> Callable[[P], P]:
    """Class or factory decorator that makes a publisher available under ``name``.

    The class (or factory) is called without arguments for each job that names it.

    Parameters
    ----------
    name
        The registry name, as jobs write it; must not be taken yet.

    Raises
    ------
    PublishError
        If the name is already registered to another publisher, or is empty or ``"*"``.
    """
    if not name or name == ALL_EARLIER or "," in name:
        raise PublishError(f"{name!r} cannot name a publisher; give a word such as 'changed_pixels'")

    def decorator(factory: P) -> P:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise PublishError(
                f"a publisher named {name!r} is already registered ({_REGISTRY[name]!r}); choose another name"
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_publishers() -> tuple[str, ...]:
    """Registered publisher names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_publisher(name: str) -> Publisher:
    """Build the publisher registered under ``name``.

    Installed packages' entry points (:data:`ENTRY_POINT_GROUP`) are loaded when ``name`` is
    not registered yet.

    Raises
    ------
    PublishError
        If no publisher has that name (the message lists those available), or what is registered
        does not build a :class:`Publisher` named ``name``.
    """
    if name not in _REGISTRY:
        PLUGINS.load()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise PublishError(
            f"no publisher named {name!r}; available: {', '.join(available_publishers())}. A publisher of "
            "your own must be registered (pipeline.publish.register_publisher) before the job is built, or "
            f"declared by an installed package as an entry point of the group {ENTRY_POINT_GROUP}"
        ) from None
    publisher = factory()
    if not isinstance(publisher, Publisher) or publisher.name != name:
        raise PublishError(
            f"the publisher registered as {name!r} builds {publisher!r}, not a Publisher named {name!r}; "
            "give it name, needs and publish(context)"
        )
    return publisher


def resolve_publishers(names: Sequence[str]) -> list[Publisher]:
    """Build the publishers ``names`` and check that each one's needs are listed before it.

    Raises
    ------
    PublishError
        If ``names`` is empty, repeats a name, names an unknown publisher, or lists a publisher
        before one it needs.
    """
    if not names:
        raise PublishError(
            f"no publishers given; name some of {', '.join(available_publishers())} "
            f"(default: {', '.join(DEFAULT_PUBLISHERS)})"
        )
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise PublishError(f"publishers {repeated} are listed more than once; list each publisher once")
    built = [get_publisher(n) for n in names]
    for index, publisher in enumerate(built):
        for need in publisher.needs:
            if need != ALL_EARLIER and need not in names[:index]:
                raise PublishError(
                    f"publisher {publisher.name!r} needs {need!r}, which the job does not list before it "
                    f"(publishers: {', '.join(names)}); list {need!r} before {publisher.name!r}"
                )
    return built


def needed_by(publisher: Publisher, order: Sequence[str]) -> tuple[str, ...]:
    """The names of the publishers ``publisher`` waits for, given the job's ``order`` of names."""
    before = tuple(order[: list(order).index(publisher.name)])
    return before if ALL_EARLIER in publisher.needs else tuple(n for n in before if n in publisher.needs)


# Importing the built-ins registers them; they import this module's registry, defined above.
from pipeline.publish import publishers as _builtins  # noqa: E402, F401
