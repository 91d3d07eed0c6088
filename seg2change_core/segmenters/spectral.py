"""Spectral-index segmenter: open-vocabulary in a small way, with no weights at all.

Class names are looked up in a fixed *lexicon* that maps each land-cover concept, and its
synonyms, to spectral-index evidence. Each piece of evidence is a logistic membership function
of one index, ``sigmoid((value - centre) / width)`` for "above" and
``sigmoid((centre - value) / width)`` for "below"; a concept's membership is the product of its
pieces. Class probabilities are the memberships normalised over the requested classes (a softmax
of the log-memberships); a background, when the prompt set has one, gets the constant membership
``background_membership``, so it wins wherever no requested class has stronger evidence.

Everything is per-pixel arithmetic, so the result never depends on how an image is tiled.

The centres and widths were set from physically typical Sentinel-2 L2A surface reflectances
(blue, green, red, nir, swir16, swir22):

============  =====================================
water         0.06 0.07 0.05 0.03 0.01 0.005
forest        0.03 0.05 0.03 0.35 0.17 0.08
grass         0.04 0.08 0.06 0.30 0.22 0.12
cropland      0.05 0.08 0.07 0.28 0.25 0.15
bare soil     0.10 0.14 0.19 0.24 0.32 0.28
building      0.16 0.17 0.18 0.20 0.26 0.24
road          0.10 0.11 0.12 0.14 0.18 0.17
burned        0.04 0.05 0.06 0.09 0.18 0.16
============  =====================================

Indices (``nd(a, b) = (a - b) / (a + b)``, bands clipped at 0 first):

``ndvi``    nd(nir, red), vegetation vigour
``ndwi``    nd(green, nir), open water (McFeeters)
``mndwi``   nd(green, swir16), open water (Xu); the same formula is the snow index NDSI
``ndbi``    nd(swir16, nir), built-up and bare surfaces
``ndmi``    nd(nir, swir16) = -ndbi, canopy water content
``bsi``     nd(swir16 + red, nir + blue), bare soil
``nbr``     nd(nir, swir22), burn severity (very low on fresh burn scars)
``redness`` nd(red, blue), the blue-to-red slope of soils (iron oxides), near 0 for grey
            built materials
``visible`` mean of blue, green and red: brightness
``swir``    mean of swir16 and swir22

Known weak spots, inherent to single-date per-pixel spectra: cropland versus grassland and
forest (a crop is told apart only by a moderate NDVI with a low NDMI, so a full-grown crop looks
like grass or forest; parcel texture or a time series would be needed), roofs versus roads (only
brightness differs), and bare soil versus roofs where soils are grey or roofs reddish. Merged
classes (``vegetation``, ``built-up``) are much more reliable than their parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seg2change_core.errors import MissingBandError, SegmenterError
from seg2change_core.prompts import ClassPrompt, PromptSet
from seg2change_core.segmenters import check_image, register_segmenter

__all__ = [
    "DEFAULT_BANDS",
    "INDICES",
    "LEXICON",
    "Evidence",
    "LexiconEntry",
    "SpectralIndex",
    "SpectralSegmenter",
    "lookup",
]

#: Band order the segmenter reads by default (STAC ``eo`` common names).
DEFAULT_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")

_EPS = 1e-6

Bands = Mapping[str, torch.Tensor]


def _nd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b) / (a + b + _EPS)


@dataclass(frozen=True)
class SpectralIndex:
    """A per-pixel index computed from named reflectance bands."""

    bands: tuple[str, ...]
    formula: Callable[[Bands], torch.Tensor]


#: The indices the lexicon uses, by name (see the module docstring for formulas).
INDICES: Mapping[str, SpectralIndex] = {
    "ndvi": SpectralIndex(("nir", "red"), lambda b: _nd(b["nir"], b["red"])),
    "ndwi": SpectralIndex(("green", "nir"), lambda b: _nd(b["green"], b["nir"])),
    "mndwi": SpectralIndex(("green", "swir16"), lambda b: _nd(b["green"], b["swir16"])),
    "ndsi": SpectralIndex(("green", "swir16"), lambda b: _nd(b["green"], b["swir16"])),
    "ndbi": SpectralIndex(("swir16", "nir"), lambda b: _nd(b["swir16"], b["nir"])),
    "ndmi": SpectralIndex(("nir", "swir16"), lambda b: _nd(b["nir"], b["swir16"])),
    "bsi": SpectralIndex(
        ("swir16", "red", "nir", "blue"),
        lambda b: _nd(b["swir16"] + b["red"], b["nir"] + b["blue"]),
    ),
    "nbr": SpectralIndex(("nir", "swir22"), lambda b: _nd(b["nir"], b["swir22"])),
    "redness": SpectralIndex(("red", "blue"), lambda b: _nd(b["red"], b["blue"])),
    "visible": SpectralIndex(("blue", "green", "red"), lambda b: (b["blue"] + b["green"] + b["red"]) / 3),
    "swir": SpectralIndex(("swir16", "swir22"), lambda b: (b["swir16"] + b["swir22"]) / 2),
    "green": SpectralIndex(("green",), lambda b: b["green"]),
    "nir": SpectralIndex(("nir",), lambda b: b["nir"]),
}


@dataclass(frozen=True)
class Evidence:
    """One logistic membership: ``sigmoid(±(index - centre) / width)``.

    Parameters
    ----------
    index
        Key of :data:`INDICES`.
    centre
        Index value of membership 0.5.
    width
        Index change that moves the membership from 0.5 to 0.73 (one logit); positive.
    above
        True: high values are members; False: low values are.
    """

    index: str
    centre: float
    width: float
    above: bool = True

    def log_membership(self, value: torch.Tensor) -> torch.Tensor:
        """``log`` of the membership of ``value``."""
        z = (value - self.centre) / self.width
        return F.logsigmoid(z if self.above else -z)


def _above(index: str, centre: float, width: float) -> Evidence:
    return Evidence(index, centre, width, above=True)


def _below(index: str, centre: float, width: float) -> Evidence:
    return Evidence(index, centre, width, above=False)


@dataclass(frozen=True)
class LexiconEntry:
    """A concept: the names that select it and the evidence that makes a pixel one."""

    concept: str
    names: tuple[str, ...]
    evidence: tuple[Evidence, ...]

    @property
    def bands(self) -> tuple[str, ...]:
        """Bands the evidence reads, in first-use order."""
        out: list[str] = []
        for ev in self.evidence:
            out.extend(b for b in INDICES[ev.index].bands if b not in out)
        return tuple(out)


# Shared by every built-up concept: SWIR above NIR, little vegetation, grey (not reddish like
# soil) and not as dark as burn scars or shade.
_BUILT = (
    _above("ndbi", -0.05, 0.05),
    _below("ndvi", 0.3, 0.05),
    _below("redness", 0.2, 0.04),
    _above("visible", 0.08, 0.02),
)

#: The concepts and their evidence. A name is matched case-insensitively, with ``-``/``_`` read
#: as spaces and a plural ``s`` dropped when the plural itself is not listed.
LEXICON: tuple[LexiconEntry, ...] = (
    LexiconEntry(
        "water",
        (
            "water",
            "river",
            "lake",
            "sea",
            "pond",
            "flood",
            "flooded area",
            "reservoir",
            "ocean",
            "water body",
            "open water",
            "canal",
        ),
        # High MNDWI and NDWI, dark NIR (which also keeps snow out).
        (_above("mndwi", 0.1, 0.08), _above("ndwi", 0.0, 0.08), _below("nir", 0.2, 0.04)),
    ),
    LexiconEntry(
        "vegetation",
        ("vegetation", "vegetated area", "plant", "plants", "greenery", "green space"),
        (_above("ndvi", 0.45, 0.06),),
    ),
    LexiconEntry(
        "forest",
        ("forest", "tree", "woodland", "wood", "woods", "canopy", "tree cover"),
        # Dense green canopy holding much water: high NDVI and high NDMI.
        (_above("ndvi", 0.65, 0.05), _above("ndmi", 0.27, 0.04)),
    ),
    LexiconEntry(
        "grass",
        ("grass", "grassland", "meadow", "pasture", "lawn", "rangeland"),
        # Green, but a drier, thinner layer than a forest canopy.
        (_above("ndvi", 0.5, 0.05), _below("ndmi", 0.27, 0.04), _above("ndmi", 0.1, 0.04)),
    ),
    LexiconEntry(
        "cropland",
        ("cropland", "field", "farmland", "crop", "agriculture", "agricultural land", "arable land"),
        # Moderate NDVI with the soil background showing in the SWIR (low NDMI).
        (_above("ndvi", 0.3, 0.06), _below("ndvi", 0.75, 0.04), _below("ndmi", 0.1, 0.04)),
    ),
    LexiconEntry(
        "built-up",
        (
            "built-up",
            "built up area",
            "urban",
            "urban area",
            "impervious",
            "impervious surface",
            "settlement",
            "city",
            "town",
        ),
        _BUILT,
    ),
    LexiconEntry(
        "building",
        ("building", "roof", "rooftop", "house", "residential"),
        (*_BUILT, _above("visible", 0.14, 0.015)),
    ),
    LexiconEntry(
        "road",
        ("road", "street", "highway", "pavement", "parking lot", "runway"),
        (*_BUILT, _below("visible", 0.14, 0.015)),
    ),
    LexiconEntry(
        "bare soil",
        (
            "bare soil",
            "bare land",
            "bareland",
            "barren",
            "barren land",
            "soil",
            "sand",
            "dirt",
            "bare ground",
            "desert",
        ),
        # Bright SWIR+red over NIR+blue, reddish, not vegetated, not burned.
        (
            _above("bsi", 0.15, 0.03),
            _above("redness", 0.2, 0.04),
            _below("ndvi", 0.3, 0.05),
            _above("nbr", -0.2, 0.04),
        ),
    ),
    LexiconEntry(
        "burned area",
        ("burned area", "burnt area", "burn scar", "burned", "burnt", "fire scar", "fire", "wildfire"),
        # Very low NBR, dark, little vegetation.
        (_below("nbr", -0.12, 0.04), _below("visible", 0.1, 0.02), _below("ndvi", 0.35, 0.05)),
    ),
    LexiconEntry(
        "snow",
        ("snow", "ice", "glacier", "snow cover"),
        (_above("ndsi", 0.4, 0.05), _above("green", 0.25, 0.04), _above("nir", 0.2, 0.04)),
    ),
    LexiconEntry(
        "cloud",
        ("cloud", "cloud cover"),
        # Bright in the visible and, unlike snow, in the SWIR.
        (_above("visible", 0.3, 0.04), _above("swir", 0.2, 0.04)),
    ),
)


def _normalise_name(name: str) -> str:
    return " ".join(name.casefold().replace("-", " ").replace("_", " ").split())


_BY_KEY: dict[str, LexiconEntry] = {_normalise_name(n): e for e in LEXICON for n in (e.concept, *e.names)}


def lookup(name: str) -> LexiconEntry | None:
    """Return the lexicon entry a class name selects, or None if the lexicon has no such name."""
    key = _normalise_name(name)
    if key in _BY_KEY:
        return _BY_KEY[key]
    if key.endswith("s") and key[:-1] in _BY_KEY:
        return _BY_KEY[key[:-1]]
    return None


def _describe_lexicon() -> str:
    return "; ".join(f"{e.concept} ({', '.join(e.names)})" for e in LEXICON)


@register_segmenter("spectral")
class SpectralSegmenter:
    """Segment multispectral reflectance by spectral-index evidence (no weights).

    Parameters
    ----------
    bands
        Common names of the image channels, in order. Defaults to :data:`DEFAULT_BANDS`; a
        subset works for classes whose evidence needs only those bands.
    background_membership
        Constant membership of the background class (when the prompt set has one): a pixel is
        background where no requested class has a membership above roughly this value.

    Notes
    -----
    A class matches the lexicon through any of its synonyms; synonyms the lexicon does not know
    are ignored, and a class whose synonyms select several concepts takes the largest of their
    memberships. Pixels with a NaN band get NaN probabilities.
    """

    name = "spectral"
    normalisation = (
        "surface reflectance as floats, nominally 0..1 (Sentinel-2 L2A or Landsat C2 L2 after "
        "their scale and offset, e.g. S2 digital numbers times 0.0001)"
    )

    def __init__(self, bands: Sequence[str] = DEFAULT_BANDS, background_membership: float = 0.1) -> None:
        if not 0.0 < background_membership < 1.0:
            raise SegmenterError(
                f"background_membership must lie strictly between 0 and 1, got {background_membership}"
            )
        self.bands: tuple[str, ...] = tuple(bands)
        if len(set(self.bands)) != len(self.bands):
            raise SegmenterError(f"bands {self.bands} repeat a name; give each band once")
        self.background_membership = background_membership

    def resolve(self, classes: PromptSet) -> list[tuple[LexiconEntry, ...] | None]:
        """Lexicon entries of each channel (None for the background).

        Raises
        ------
        SegmenterError
            If a class has no name the lexicon knows.
        MissingBandError
            If a class needs a band not in :attr:`bands`.
        """
        resolved: list[tuple[LexiconEntry, ...] | None] = []
        for channel, prompt in enumerate(classes.prompts):
            if channel == classes.background_index:
                resolved.append(None)
                continue
            resolved.append(self._entries(prompt))
        missing: dict[str, list[str]] = {}
        for prompt, entries in zip(classes.prompts, resolved, strict=True):
            for entry in entries or ():
                for band in entry.bands:
                    if band not in self.bands:
                        missing.setdefault(band, [])
                        if prompt.name not in missing[band]:
                            missing[band].append(prompt.name)
        if missing:
            detail = "; ".join(f"{band} (for {', '.join(names)})" for band, names in missing.items())
            raise MissingBandError(
                f"the spectral segmenter lacks bands: {detail}. It was given bands "
                f"{', '.join(self.bands)}; add the missing bands to the job's bands, or drop those classes"
            )
        return resolved

    def _entries(self, prompt: ClassPrompt) -> tuple[LexiconEntry, ...]:
        entries: list[LexiconEntry] = []
        for name in prompt.names:
            entry = lookup(name)
            if entry is not None and entry not in entries:
                entries.append(entry)
        if not entries:
            raise SegmenterError(
                f"the spectral segmenter has no evidence for class {str(prompt)!r}. It knows: "
                f"{_describe_lexicon()}. Rename the class to one of these, or use the 'clip' "
                "segmenter for free-form class names"
            )
        return tuple(entries)

    def segment(self, image: torch.Tensor, classes: PromptSet) -> torch.Tensor:
        """Per-class probabilities from spectral-index memberships.

        Parameters
        ----------
        image
            ``(B, len(bands), H, W)`` float reflectance, bands in :attr:`bands` order.
        classes
            The classes; each must be known to the lexicon (see :data:`LEXICON`).

        Returns
        -------
        torch.Tensor
            ``(B, K, H, W)`` probabilities, same dtype as the image.

        Raises
        ------
        SegmenterError
            Unknown class, wrong image layout, or digital numbers instead of reflectance.
        MissingBandError
            A class needs a band the image does not have.
        """
        resolved = self.resolve(classes)
        check_image(image, self.bands, self.name)
        if image.numel() and float(torch.nan_to_num(image, nan=0.0).amax()) > 10.0:
            raise SegmenterError(
                "the image holds values above 10, which looks like digital numbers, not reflectance: "
                "scale it to 0..1 first (Sentinel-2 L2A: multiply by 0.0001)"
            )
        bands = {name: image[:, i].clamp_min(0.0) for i, name in enumerate(self.bands)}
        cache: dict[str, torch.Tensor] = {}

        def index(name: str) -> torch.Tensor:
            if name not in cache:
                cache[name] = INDICES[name].formula(bands)
            return cache[name]

        shape = (image.shape[0], image.shape[2], image.shape[3])
        log_bg = torch.full(
            shape, math.log(self.background_membership), dtype=image.dtype, device=image.device
        )
        scores: list[torch.Tensor] = []
        for entries in resolved:
            if entries is None:
                scores.append(log_bg)
                continue
            per_concept = [
                torch.stack([ev.log_membership(index(ev.index)) for ev in entry.evidence]).sum(0)
                for entry in entries
            ]
            scores.append(torch.stack(per_concept).amax(0))
        return torch.softmax(torch.stack(scores, dim=1), dim=1)
