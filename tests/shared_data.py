"""Reference files for the parity tests (CHAIR, POPE, AMBER, MMHal): they live in ../shared/data beside the
repository and are never copied into it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PARITY_SKIP = "PARITY NOT CHECKED"  # how a skipped reference-parity test's reason starts (see the summary hook)


def require_shared_data(path: Path, what: str) -> None:
    """Skip a reference-parity test whose reference files (under ../shared/data, never copied into the repo)
    are absent, saying so loudly; on CI (the CI variable set) with ../shared/data present, a missing file is
    a failure, not a skip: the parity checks must run there."""
    if path.exists():
        return
    if os.environ.get("CI") and SHARED_DATA.is_dir():
        pytest.fail(f"CI with {SHARED_DATA} present, but {path} is missing: the {what} parity test must run on CI")
    pytest.skip(f"{PARITY_SKIP}: {what} needs {path}, which is absent (the reference files live in "
                f"../shared/data beside the repository; they are not shipped)")
