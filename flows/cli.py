"""The ``seg2change`` command line: one entry point in front of the models, the pipeline and the flows.

It sits in ``flows`` because it is the top of the import graph: commands import what they need
lazily, so ``seg2change --help`` stays fast and a command never pays for another's imports.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.logging import RichHandler
from rich.table import Table

from flows.console import error_text, make_console, styled
from flows.options import FORCE_ALIAS_HELP, overwrite_flag
from seg2change_core.errors import Seg2ChangeError

if TYPE_CHECKING:  # the commands import these lazily, so that --help stays fast
    from pipeline.cost import JobEstimate
    from pipeline.cube import PreparedCube
    from pipeline.demo import DemoResult
    from pipeline.run import RunResult
    from pipeline.spec import JobSpec

app = typer.Typer(
    name="seg2change",
    help=(
        "Open-vocabulary change detection over large areas (Seg2Change).\n\n"
        "Finds bi-temporal scenes in a STAC catalog, builds a cloud-free cube, and maps change over it."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = make_console(stderr=True)
out = make_console()


@app.callback()
def _main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log detail (-v info, -vv debug).")
    ] = 0,
) -> None:
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    for name in ("pipeline", "flows", "seg2change_core"):
        logging.getLogger(name).setLevel(level)
    # Dask logs every cluster start, connection and out-of-band call at INFO: only with -vv.
    # Importing distributed sets its logger's level from Dask's configuration, which reads this
    # variable; distributed is not imported here, so that a bad job is refused before it loads.
    dask_level = "debug" if verbose >= 2 else "warning"
    os.environ["DASK_LOGGING__DISTRIBUTED"] = dask_level
    if "distributed" in sys.modules:
        logging.getLogger("distributed").setLevel(dask_level.upper())


def _fail(exc: Seg2ChangeError) -> None:
    console.print(error_text(exc))
    raise typer.Exit(code=2)


@app.command()
def prepare(
    job_file: Annotated[Path, typer.Argument(help="Job YAML (see README for its fields).")],
    output: Annotated[str | None, typer.Option(help="Output folder; replaces the job's 'output'.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing cube.")] = False,
    force: Annotated[bool, typer.Option("--force", hidden=True, help=FORCE_ALIAS_HELP)] = False,
    allow_large: Annotated[
        bool,
        typer.Option("--allow-large", help="Go on with a job over its size limit (limits.max_pixels)."),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Discover the job's scenes and write its cloud-free bi-temporal input cube (Zarr)."""
    from pipeline.spec import load_job

    overwrite = overwrite_flag(overwrite, force)
    try:
        job = load_job(job_file, output=output, overwrite=overwrite or None)
        from pipeline.cube import prepare_cube
        from pipeline.discover import discover

        job = _checked_for_prepare(job, allow_large)
        found = discover(job)
        _print_discovery(found.provenance())
        cube = prepare_cube(job, found, progress=progress)
    except Seg2ChangeError as exc:
        _fail(exc)
        return
    _print_cube(cube)


@app.command()
def discover(
    job_file: Annotated[Path, typer.Argument(help="Job YAML.")],
) -> None:
    """List the scenes the job would use in each time window, and where the cloud filter ran."""
    from pipeline.spec import load_job

    try:
        job = load_job(job_file)
        from pipeline.cost import estimate_job
        from pipeline.discover import discover as run_discovery

        _print_estimate(estimate_job(job))
        found = run_discovery(job)
    except Seg2ChangeError as exc:
        _fail(exc)
        return
    _print_discovery(found.provenance())


@app.command()
def generate(
    output: Annotated[Path, typer.Argument(help="Folder for the scene's COGs, STAC and ground truth.")],
    size: Annotated[int, typer.Option(help="Side of the square scene in pixels (>= 256).")] = 1024,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    acquisitions: Annotated[int, typer.Option(help="Acquisitions per epoch.")] = 3,
    epsg: Annotated[int, typer.Option(help="UTM EPSG code of the grid.")] = 32633,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing scene.")] = False,
    force: Annotated[bool, typer.Option("--force", hidden=True, help=FORCE_ALIAS_HELP)] = False,
) -> None:
    """Generate a synthetic bi-temporal multispectral scene with clouds and known change."""
    from pipeline.synthetic import SceneSpec, generate_scene

    overwrite = overwrite_flag(overwrite, force)
    try:
        spec = SceneSpec(size=size, seed=seed, acquisitions_per_epoch=acquisitions, epsg=epsg)
        scene = generate_scene(spec, output, overwrite=overwrite)
    except Seg2ChangeError as exc:
        _fail(exc)
        return
    out.print(styled("scene written to ", (str(output), "bold"), f": {len(scene.items)} items"))
    out.print(f"  collection: {scene.collection_path}")
    out.print(f"  items:      {scene.items_path}")
    out.print(f"  truth:      {scene.truth_change.parent}")


@app.command()
def serve(
    collection: Annotated[Path, typer.Argument(help="Collection JSON.")],
    items: Annotated[Path, typer.Argument(help="Items as newline-delimited JSON.")],
    kind: Annotated[
        str, typer.Option(help="Server: 'rustac' (in-memory) or 'pgstac' (PostgreSQL).")
    ] = "rustac",
) -> None:
    """Serve a collection from a local STAC API until interrupted (Ctrl-C, SIGTERM or SIGHUP stop and clean up)."""
    import signal
    import time

    from pipeline.stac_servers import serve_collection

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Python's default SIGTERM (and SIGHUP, a closed terminal) ends the process at once: the server's
    # own process group and its temporary folder would outlive it. Raising here unwinds the ``with``
    # block, which stops both. SIGINT is set too: a process started in the background of a
    # non-interactive shell inherits SIGINT ignored, and Python then installs no handler for it.
    stopping = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {sig: signal.signal(sig, _stop) for sig in stopping}
    try:
        with serve_collection(collection, items, kind=kind) as server:  # type: ignore[arg-type]
            out.print(styled("STAC API at ", (server.url, "bold"), " (Ctrl-C to stop)"))
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        console.print("STAC API stopped")
    except Seg2ChangeError as exc:
        _fail(exc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="Job YAML with prompts (see README).")],
    output: Annotated[str | None, typer.Option(help="Output folder; replaces the job's 'output'.")] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace existing outputs: recompute everything, even finished work."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", hidden=True, help=FORCE_ALIAS_HELP)] = False,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a running Dask scheduler (default: the job's cluster).")
    ] = None,
    dashboard: Annotated[
        str | None,
        typer.Option(
            help="Serve the Dask scheduler's dashboard (a local or kind slurm cluster's) at this address, "
            "e.g. 127.0.0.1:8787 "
            "(default: no HTTP server; see README, 'Cluster dashboard')."
        ),
    ] = None,
    allow_large: Annotated[
        bool,
        typer.Option("--allow-large", help="Go on with a job over its size limit (limits.max_pixels)."),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the main job: discover -> prepare -> infer -> publish (restartable; finished work is kept)."""
    from pipeline.spec import load_job

    overwrite = overwrite_flag(overwrite, force)
    try:
        job = load_job(job_file, output=output)
        cluster: dict[str, object] = {}
        if scheduler:
            cluster["address"] = scheduler
        if dashboard:
            cluster["dashboard"] = dashboard
        if cluster:
            from pipeline.engine_spec import ClusterSpec
            from pipeline.errors import JobSpecError

            backend = job.cluster.backend
            if backend is not None and scheduler:
                raise JobSpecError(
                    f"--scheduler names a running scheduler, but the job's cluster is kind {backend.kind}, "
                    "which launches its own; drop --scheduler, or give the job cluster: {address: ...}"
                )
            # a launched back-end's fields (dashboard among them) are written flat, as in a job file
            fields = (
                job.cluster.model_dump()
                if backend is None
                else {**backend.model_dump(), "torch_threads": job.cluster.torch_threads}
            )
            spec = ClusterSpec.build(**{**fields, **cluster})
            job = job.model_copy(update={"cluster": spec})
        from pipeline.run import run_job

        job = _allow_large(job, allow_large)
        result = run_job(job, on_estimate=_print_estimate, force=overwrite, progress=progress)
    except Seg2ChangeError as exc:
        _fail(exc)
        return
    _print_discovery(result.discovery.provenance())
    _print_run(result)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the generated scene and the outputs.")] = Path(
        "seg2change-demo"
    ),
    size: Annotated[int, typer.Option(help="Scene side in pixels.")] = 1024,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Regenerate and recompute everything.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", hidden=True, help=FORCE_ALIAS_HELP)] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the main job on the embedded default: generated scene, embedded STAC API, local Dask cluster."""
    from pipeline.demo import run_demo

    overwrite = overwrite_flag(overwrite, force)
    try:
        result = run_demo(workdir, size=size, overwrite=overwrite, progress=progress)
    except Seg2ChangeError as exc:
        _fail(exc)
        return
    _print_discovery(result.run.discovery.provenance())
    _print_run(result.run)
    acc = result.accuracy
    out.print(
        f"change map against the generated truth: IoU {acc.iou:.3f}, F1 {acc.f1:.3f}, "
        f"precision {acc.precision:.3f}, recall {acc.recall:.3f}, OA {acc.oa:.3f}"
    )
    _print_demo_targets(result)
    out.print(
        styled("job file (runs again without a server): ", (f"seg2change run {result.job_file}", "bold"))
    )


def _print_demo_targets(result: DemoResult) -> None:
    """Per-target and per-kind accuracy of a demo run against its generated truth."""
    table = Table(title="target change against the generated truth (changed on either date)")
    for column in ("target", "truth px", "flagged px", "recall", "precision", "IoU", "no data"):
        table.add_column(column, justify="left" if column == "target" else "right", no_wrap=True)
    for t in result.targets:
        s = t.scores
        table.add_row(
            t.target,
            f"{t.truth_pixels:,}",
            f"{t.flagged_pixels:,}",
            _share(s.recall),
            _share(s.precision),
            _share(s.iou),
            f"{t.unscored:,}",
        )
    out.print(table)
    kinds = Table(title="generated change found by the change map, per kind")
    for column in ("kind", "truth px", "detected px", "recall", "no data"):
        kinds.add_column(column, justify="left" if column == "kind" else "right", no_wrap=True)
    for k in result.kinds:
        kinds.add_row(
            k.kind.label, f"{k.truth_pixels:,}", f"{k.detected_pixels:,}", _share(k.recall), f"{k.unscored:,}"
        )
    out.print(kinds)


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _print_run(result: RunResult) -> None:
    from pipeline.publish import statistics_table

    _print_cube(result.cube)
    inference = result.inference
    out.print(
        styled(
            "change cube: ",
            (str(inference.path), "bold"),
            f" ({len(inference.computed)} block(s) computed, "
            f"{len(inference.skipped)} already done, {inference.wall_seconds:.1f} s)",
        )
    )
    publication = result.publication
    if "statistics" in publication.artifacts:
        out.print(statistics_table(publication.statistics, limit=12))
    else:
        out.print("no change statistics: the job's publishers leave out 'statistics'")
    out.print(styled("published in ", (str(result.job.output), "bold"), ":"))
    out.print(f"  {'change cube':<24} {inference.path}")
    for key, path in publication.locations.items():
        out.print(f"  {key:<24} {path}")


def _print_discovery(provenance: dict[str, object]) -> None:
    items = provenance["items"]
    assert isinstance(items, dict)
    table = Table(title=f"scenes found ({provenance['filter_mode']} cloud filter)")
    for column in ("epoch", "item", "datetime", "cloud %"):
        table.add_column(column)
    for epoch, rows in items.items():
        for row in rows:
            cloud = row.get("eo:cloud_cover")
            table.add_row(epoch, row["id"], str(row["datetime"]), "-" if cloud is None else f"{cloud:.1f}")
    out.print(table)


def _allow_large(job: JobSpec, allow: bool) -> JobSpec:
    """The job with ``limits.allow_large`` set when ``--allow-large`` was given."""
    if not allow:
        return job
    return job.model_copy(update={"limits": job.limits.model_copy(update={"allow_large": True})})


def _checked_for_prepare(job: JobSpec, allow_large: bool) -> JobSpec:
    """Run the checks that need no pixels and print the estimate; the job as it will run."""
    from pipeline.preflight import preflight

    job = _allow_large(job, allow_large)
    _print_estimate(preflight(job, inference=False).estimate)
    return job


def _print_estimate(estimate: JobEstimate) -> None:
    out.print(f"estimate: {estimate.describe()}", markup=False, highlight=False)


def _print_cube(cube: PreparedCube) -> None:
    out.print(styled("input cube: ", (str(cube.path), "bold")))
    out.print(f"  shape (epoch, band, y, x): {cube.shape}, bands {', '.join(cube.bands)}")
    out.print(f"  grid: {cube.crs}, transform {cube.transform}")
    clear = ", ".join(f"{k} {v:.1%}" for k, v in cube.clear_fraction.items())
    out.print(f"  composite pixels with a clear observation: {clear}")


def _register_commands() -> None:
    """Add the commands defined beside this module (models, flows) to the app."""
    from flows.commands_data import synthesise_buildings
    from flows.commands_flows import catalog, monitor, respond
    from flows.commands_model import evaluate, make_demo_checkpoint
    from flows.commands_sequence import sequence
    from flows.commands_train import train

    app.command()(train)
    app.command()(evaluate)
    app.command(name="make-demo-checkpoint")(make_demo_checkpoint)
    app.command()(respond)
    app.command()(monitor)
    app.command()(catalog)
    app.command()(sequence)
    app.command(name="synthesise-buildings")(synthesise_buildings)


_register_commands()


if __name__ == "__main__":
    app()
