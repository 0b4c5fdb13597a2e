"""Locating the files ICP ships beside its code: migrations, the web console, map data."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The shipped folder ``name`` (``migrations``, ``web`` or ``data``).

    A wheel carries them inside the package (``icp/_resources/``); an editable install or a
    source checkout finds them at the top of the repository.
    """
    for candidate in (_PACKAGE / "_resources" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"ICP resource folder {name!r} is missing from this installation")
