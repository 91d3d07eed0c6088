"""Href signers: functions that make a catalog's asset hrefs readable, named by a job.

Some catalogs list assets whose hrefs cannot be read as they are: Microsoft Planetary Computer
hands out Azure Blob Storage URLs that need a short-lived SAS token appended. A job names a signer
in ``catalog.sign``; discovery resolves it by import and passes every asset href of the items it
found through it, after the search.

A signer is any callable that takes one href and returns the href to read instead
(:data:`HrefSigner`). It is named either by a preset (:data:`PRESETS`) or by the import path
``package.module:function`` of a module installed in the environment or in the current folder. This module imports nothing heavy, so a job can be validated without
the signer's package installed; the import happens when discovery starts.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from pipeline.errors import CatalogError

__all__ = ["PRESETS", "HrefSigner", "SignerPreset", "check_signer_name", "resolve_signer"]

#: Takes an asset href, returns the (signed) href to read.
HrefSigner = Callable[[str], str]


@dataclass(frozen=True)
class SignerPreset:
    """A signer known by a short name.

    Attributes
    ----------
    target
        Import path ``module:function`` of the signer.
    package
        The pip distribution that provides ``module``, named in the error when it is missing.
    """

    target: str
    package: str


#: Signers known by name. ``planetary_computer`` signs Azure Blob hrefs with a SAS token (other
#: hrefs are returned unchanged); set ``PC_SDK_SUBSCRIPTION_KEY`` for less strict rate limits.
PRESETS: dict[str, SignerPreset] = {
    "planetary_computer": SignerPreset("planetary_computer:sign_url", "planetary-computer"),
}

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_signer_name(name: str) -> str:
    """Return ``name`` when it is a preset or a ``module:function`` import path.

    Raises
    ------
    ValueError
        The name is neither; the message lists the presets and the import path form.
    """
    if name in PRESETS or _IMPORT_PATH.match(name):
        return name
    raise ValueError(
        f"{name!r} is neither a known href signer ({', '.join(sorted(PRESETS))}) nor an import "
        "path 'package.module:function' of a function that takes an href and returns the signed href"
    )


def resolve_signer(name: str) -> HrefSigner:
    """Import the signer a job names.

    Parameters
    ----------
    name
        A key of :data:`PRESETS` or an import path ``package.module:function``.

    Raises
    ------
    CatalogError
        The module is not installed (the message says what to ``pip install``), has no such
        attribute, or the attribute is not callable.
    """
    check_signer_name(name)
    preset = PRESETS.get(name)
    target = preset.target if preset else name
    module_name, _, attribute = target.partition(":")
    try:
        module = _import(module_name, from_cwd=preset is None)
    except ModuleNotFoundError as exc:
        if preset is not None:
            hint = f"install it into this environment: {sys.executable} -m pip install {preset.package}"
        else:
            hint = f"install the package that provides {module_name!r}, or correct catalog.sign"
        raise CatalogError(
            f"the job signs asset hrefs with {name!r}, but module {exc.name!r} is not installed; {hint}"
        ) from None
    obj: object = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise CatalogError(
                f"catalog.sign {name!r}: {target.replace(':', '.')} does not exist; "
                "name a function as 'package.module:function'"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise CatalogError(
            f"catalog.sign {name!r}: {target} is a {type(obj).__name__}, not a function that takes an href "
            "and returns the signed href"
        )
    return obj


def _import(module_name: str, *, from_cwd: bool) -> ModuleType:
    """Import a module, also from the current folder (a console script does not search it)."""
    cwd = os.getcwd()
    added = from_cwd and cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(cwd)
