"""Data commands of the ``seg2change`` CLI: ``synthesise-buildings``.

Plain functions with typer annotations; :mod:`flows.cli` registers them on the app. The
generator (rasterio, scipy) is imported inside the function, so the CLI starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands_model import _fail, out_console
from seg2change_core.errors import Seg2ChangeError

__all__ = ["synthesise_buildings"]


def synthesise_buildings(
    images: Annotated[
        list[Path], typer.Argument(help="8-bit georeferenced images (GeoTIFF) the footprints cover.")
    ],
    footprints: Annotated[
        Path, typer.Option(help="GeoJSON building footprints in longitude/latitude (e.g. Microsoft, OSM).")
    ],
    out: Annotated[Path, typer.Option(help="New folder for the A/ B/ label/ pairs.")],
    tile: Annotated[int, typer.Option(help="Side of the written pairs, px.")] = 512,
    variants: Annotated[int, typer.Option(help="Pairs per tile, each with other buildings removed.")] = 2,
    share: Annotated[
        float, typer.Option(help="Chance that a building is removed from the earlier date.")
    ] = 0.5,
    relocated: Annotated[
        float,
        typer.Option(
            help="Share of pairs whose date A is another place with all buildings removed (a whole area built up)."
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed: the same inputs and seed give the same files.")] = 0,
) -> None:
    """Make building-change training pairs from imagery and footprints: buildings removed from date A.

    Train on them beside labelled data with ``seg2change train ... --extra-train OUT``.
    """
    from seg2change_core.datasets.synthetic_buildings import BuildingRemoval, synthesise_building_change

    try:
        written = synthesise_building_change(
            images,
            footprints,
            out,
            tile=tile,
            variants=variants,
            removal=BuildingRemoval(share=share, relocated=relocated),
            seed=seed,
        )
    except Seg2ChangeError as exc:
        _fail(exc)
        return
    out_console.print(f"{written} pairs in {out} (A/, B/, label/; how they were made: {out}/SYNTHETIC.json)")
    out_console.print(f"train with them: seg2change train DATA... --extra-train {out}", markup=False)
