"""The one door from the tests to ../shared (real documents written outside this project).

Tests that need a shared fixture call `shared_file(...)`; when the folder is absent (a bare
clone without the design repository beside it) they are skipped with a message that says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ICP_SHARED_DIR", REPO_ROOT.parent / "shared"))


def shared_dir(*parts: str) -> Path:
    """A folder under ../shared, or skip the calling test clearly if it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"shared folder {path} is absent (set ICP_SHARED_DIR to the shared folder)")
    return path


def shared_file(*parts: str) -> Path:
    """Path of a file under ../shared, or skip the calling test clearly if it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared fixture {path} is absent (set ICP_SHARED_DIR to the shared folder)")
    return path
