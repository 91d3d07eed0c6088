"""Command-line front of the flows: ``seg2change respond``, ``seg2change monitor`` and
``seg2change catalog`` (the user's own GeoTIFFs as a STAC ItemCollection a job reads).

Plain typer command functions; :mod:`flows.cli` registers them (``app.command()(respond)``).
Each runs its flow in this process (against ``PREFECT_API_URL`` when set, else a temporary local
Prefect server) and prints the result as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from flows.console import error_text, make_console
from flows.options import FORCE_ALIAS_HELP, overwrite_flag
from seg2change_core.errors import Seg2ChangeError

__all__ = ["catalog", "monitor", "respond"]


def _parse_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date; write it as YYYY-MM-DD") from None


def _json_option(value: str | None, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{what} is neither a JSON file nor JSON text ({exc})") from None
    if not isinstance(doc, dict):
        raise typer.BadParameter(f"{what} must be a JSON object")
    return doc


def _fail(exc: Seg2ChangeError) -> NoReturn:
    make_console(stderr=True).print(error_text(exc))
    raise typer.Exit(code=2) from None


def _check(build: Callable[[], object]) -> None:
    """Build the run's jobs here first, so that a bad one is refused before Prefect loads."""
    try:
        build()
    except Seg2ChangeError as exc:
        _fail(exc)


def _run(flow: Any, scheduler: str | None, **parameters: Any) -> None:
    from flows.tasks import task_runner

    runner = flow.with_options(task_runner=task_runner(scheduler)) if scheduler else flow
    try:
        result = runner(**parameters)
    except Seg2ChangeError as exc:
        _fail(exc)
    typer.echo(json.dumps(result, indent=2, default=str))


#: Options of ``respond`` whose help takes more than a line, named here to keep its signature short.
_CatalogOption = Annotated[
    str | None,
    typer.Option(
        help="STAC API URL or local catalog file (an ItemCollection, .ndjson, or a static catalog.json "
        "with child links; one written by 'seg2change catalog' brings its own defaults)."
    ),
]
_CollectionsOption = Annotated[
    str | None,
    typer.Option(help="Collection ids, comma-separated (default with own imagery: its collection)."),
]
_BeforeImagesOption = Annotated[
    list[str] | None,
    typer.Option(
        help="Own imagery before the event: folder, glob or file (repeatable); instead of --catalog."
    ),
]
_AfterImagesOption = Annotated[
    list[str] | None,
    typer.Option(
        help="Own imagery after the event: folder, glob or file (repeatable); instead of --catalog."
    ),
]
_FootprintsOption = Annotated[
    str | None,
    typer.Option(help="Building (or parcel) polygons, GeoJSON or GeoParquet: a per-feature impact table."),
]
_FootprintZoneOption = Annotated[
    str | None, typer.Option(help="Property of the footprints naming their zone, for the summary by zone.")
]
_ThresholdOption = Annotated[
    float, typer.Option(help="Changed fraction of a footprint from which it counts as affected.")
]
_TileSizeOption = Annotated[
    int | None,
    typer.Option(
        help="Model tile side in pixels; default: the change model's own (504 for CACH, which it computes "
        "without padding; valid CACH sides are multiples of 252)."
    ),
]
_JobOptionsOption = Annotated[
    str | None, typer.Option(help="Further job fields as JSON text or file (bands, quality, models...).")
]
_SchedulerOption = Annotated[
    str | None, typer.Option(help="Dask scheduler address for the tasks, or 'local' (default: threads).")
]
_ForceOption = Annotated[bool, typer.Option("--force", hidden=True, help=FORCE_ALIAS_HELP)]


def respond(
    area: Annotated[str, typer.Option(help="GeoJSON file or text, or bbox 'xmin,ymin,xmax,ymax'.")],
    event_date: Annotated[str, typer.Option(help="Day of the event, YYYY-MM-DD.")],
    hazard: Annotated[str, typer.Option(help="flood, fire, storm or earthquake.")],
    output: Annotated[str, typer.Option(help="Output folder.")],
    catalog: _CatalogOption = None,
    collections: _CollectionsOption = None,
    before_images: _BeforeImagesOption = None,
    after_images: _AfterImagesOption = None,
    footprints: _FootprintsOption = None,
    footprint_zone: _FootprintZoneOption = None,
    affected_threshold: _ThresholdOption = 0.25,
    area_crs: Annotated[str, typer.Option(help="CRS of the area's coordinates.")] = "EPSG:4326",
    before_days: Annotated[int, typer.Option(help="Days before the event in the before window.")] = 60,
    after_days: Annotated[int, typer.Option(help="Days after the event in the after window.")] = 14,
    prompts: Annotated[
        str | None, typer.Option(help="Classes and targets as JSON (default: the hazard's prompts).")
    ] = None,
    block_size: Annotated[int, typer.Option(help="Block side in pixels.")] = 512,
    tile_size: _TileSizeOption = None,
    priority: Annotated[int, typer.Option(help="Priority recorded on the run (1 highest).")] = 1,
    job_options: _JobOptionsOption = None,
    scheduler: _SchedulerOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute outputs that exist.")] = False,
    force: _ForceOption = False,
) -> None:
    """Map the change around a reported event (flood, fire, storm, earthquake) and print its statistics.

    The imagery comes from a STAC catalog (--catalog) or from the responders' own GeoTIFFs
    (--before-images, --after-images); with --footprints the change inside each footprint is
    measured too, and footprints outside the imagery are reported as not covered.
    """
    from flows.events import check_footprints, event_job

    event_day = _parse_date(event_date)
    _check(lambda: check_footprints(footprints, output, affected_threshold))
    catalog, collections = _imagery(catalog, collections, before_images, after_images, event_day, output)
    try:
        from pipeline.own_imagery import own_imagery_options

        options = own_imagery_options(
            catalog, _json_option(job_options, "--job-options"), tile_size=tile_size
        )
    except Seg2ChangeError as exc:
        _fail(exc)
    event: dict[str, Any] = {
        "area": area,
        "event_date": event_day,
        "hazard": hazard,
        "catalog": catalog,
        "collections": collections,
        "output": output,
        "area_crs": area_crs,
        "before_days": before_days,
        "after_days": after_days,
        "prompts": _json_option(prompts, "--prompts"),
        "block_size": block_size,
        "job_options": options,
        "tile_size": tile_size,
    }
    _check(lambda: event_job(**event))
    from flows.response import response_flow

    _run(
        response_flow,
        scheduler,
        **event,
        priority=priority,
        force=overwrite_flag(overwrite, force),
        footprints=footprints,
        footprint_zone=footprint_zone,
        affected_threshold=affected_threshold,
    )


def _imagery(
    catalog: str | None,
    collections: str | None,
    before: list[str] | None,
    after: list[str] | None,
    event_day: date,
    output: str,
) -> tuple[str, str]:
    """The catalog and collections of a response: given, or an ItemCollection of the own imagery.

    Own imagery is dated by its side of the event (the day before, the event day), so files need no
    time of their own; its items are written to ``<output>.catalog/items.json``, beside the output
    folder and never inside it.
    """
    if catalog is not None:
        if before or after:
            raise typer.BadParameter("give either --catalog or --before-images/--after-images, not both")
        if collections is None:
            items_collections = _own_collections(catalog)
            if not items_collections:
                raise typer.BadParameter(
                    "--collections is required with a STAC API or a catalog of other items"
                )
            return catalog, items_collections
        return catalog, collections
    if not before or not after:
        raise typer.BadParameter(
            "give --catalog, or the own imagery of both dates with --before-images and --after-images"
        )
    from pipeline.own_imagery import DEFAULT_COLLECTION, catalog_rasters, write_item_collection

    if "://" in output:
        raise typer.BadParameter(
            "own imagery is catalogued beside a local output folder; give a local --output, or catalog "
            "the images first with 'seg2change catalog' and pass --catalog"
        )
    folder = Path(f"{output.rstrip('/')}.catalog")
    moments = [
        datetime.combine(event_day - timedelta(days=1), time(12)),
        datetime.combine(event_day, time(12)),
    ]
    try:
        items = catalog_rasters(
            [*before, *after], datetimes=[moments[0]] * len(before) + [moments[1]] * len(after)
        )
        folder.mkdir(parents=True, exist_ok=True)
        written = write_item_collection(items, folder / "items.json", overwrite=True)
    except Seg2ChangeError as exc:
        _fail(exc)
    return str(written), collections or DEFAULT_COLLECTION


def _own_collections(catalog: str) -> str | None:
    if catalog.startswith(("http://", "https://")) or not Path(catalog).is_file():
        return None
    from pipeline.discover import open_catalog_items
    from pipeline.own_imagery import OWN_IMAGERY_PROPERTY

    try:
        items = list(open_catalog_items(catalog))
    except Seg2ChangeError:
        return None
    if not items or not all(i.get("properties", {}).get(OWN_IMAGERY_PROPERTY) for i in items):
        return None
    return ",".join(sorted({str(i.get("collection")) for i in items}))


def monitor(
    job_files: Annotated[list[Path] | None, typer.Argument(help="One job file per region.")] = None,
    zones: Annotated[Path | None, typer.Option(help="GeoJSON FeatureCollection of regions.")] = None,
    base_job: Annotated[Path | None, typer.Option(help="Job template applied to each zone.")] = None,
    output: Annotated[
        str | None, typer.Option(help="Base output folder: <output>/<region>/<period>.")
    ] = None,
    cadence: Annotated[str, typer.Option(help="monthly, quarterly or yearly.")] = "monthly",
    run_date: Annotated[str | None, typer.Option(help="Day of the run, YYYY-MM-DD (default: today).")] = None,
    zones_crs: Annotated[str, typer.Option(help="CRS of the zone coordinates.")] = "EPSG:4326",
    scheduler: _SchedulerOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Recompute regions whose outputs exist.")
    ] = False,
    force: _ForceOption = False,
    mode: Annotated[
        str,
        typer.Option(
            help="pairs: a two-date job per region and period (<output>/<region>/<period>); sequence: "
            "append the period to one sequence per region (<output>/<region>/sequence), computing only "
            "the new pair."
        ),
    ] = "pairs",
) -> None:
    """Compute, per region, the change of the period just ended against the one before it."""
    from flows.monitoring_plan import monitoring_plan

    run: dict[str, Any] = {
        "zones": str(zones) if zones else None,
        "base_job": str(base_job) if base_job else None,
        "job_files": [str(f) for f in job_files] if job_files else None,
        "output": output,
        "cadence": cadence,
        "run_date": _parse_date(run_date) if run_date else datetime.now().date(),
        "zones_crs": zones_crs,
        "mode": mode,
    }
    replace = overwrite_flag(overwrite, force)
    _check(lambda: monitoring_plan(**run, force=replace))
    from flows.monitoring import monitoring_flow

    _run(monitoring_flow, scheduler, **run, force=replace)


def _parse_datetime(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date or time; write it as YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS"
        ) from None


def catalog(
    sources: Annotated[
        list[str],
        typer.Argument(help="Folders (their *.tif at any depth), glob patterns or GeoTIFF/COG files."),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="ItemCollection JSON to write (.ndjson: one item a line).")
    ],
    when: Annotated[
        list[str] | None,
        typer.Option(
            "--datetime",
            help="Acquisition date or time (ISO 8601): once for all sources, or once per source in order. "
            "Default: from --name-date, else the files' DATETIME tag.",
        ),
    ] = None,
    name_date: Annotated[
        str | None, typer.Option(help="strptime pattern of the date in the file names, e.g. '%Y%m%d'.")
    ] = None,
    collection: Annotated[str, typer.Option(help="Collection id of the items (the job's collections).")] = (
        "own-imagery"
    ),
    bands: Annotated[
        str | None,
        typer.Option(
            help="Common names of the bands in file order, comma-separated, e.g. 'red,green,blue' "
            "(default: from each file's colour interpretation)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False,
) -> None:
    """Describe GeoTIFF/COG files as a STAC ItemCollection (own CRS, footprint, time, bands) for a job."""
    from rich.table import Table

    from pipeline.own_imagery import catalog_rasters, write_item_collection

    moments = [_parse_datetime(value) for value in when or ()]
    names = [b.strip() for b in bands.split(",") if b.strip()] if bands else None
    try:
        items = catalog_rasters(
            sources, collection=collection, datetimes=moments, name_pattern=name_date, bands=names
        )
        written = write_item_collection(items, out, overwrite=overwrite)
    except Seg2ChangeError as exc:
        _fail(exc)
    console = make_console()
    table = Table(title=f"{len(items)} item(s) in collection {collection!r}")
    for column in ("item", "datetime", "crs", "shape", "bands"):
        table.add_column(column)
    for item in items:
        listed = item.assets["image"].extra_fields.get("eo:bands", [])
        table.add_row(
            item.id,
            item.datetime.isoformat() if item.datetime else "",
            f"EPSG:{item.properties.get('proj:epsg')}",
            "x".join(str(v) for v in item.properties.get("proj:shape", [])),
            ",".join(str(b.get("common_name") or b.get("name")) for b in listed),
        )
    console.print(table)
    folders = sorted({str(Path(str(i.assets["image"].href)).parent) for i in items})
    console.print(f"wrote {written}")
    console.print(
        f"use it in a job: catalog: {written}, collections: [{collection}], quality: none, "
        f"cloud_limit: 100, asset_roots: [{', '.join(folders)}]"
    )
