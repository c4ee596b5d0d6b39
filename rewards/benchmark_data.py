"""Where benchmark files live that halign does not ship (COCO synonym lists, AMBER, MMHal-Bench items):
$HALIGN_DATA_DIR, else the `shared/data` folder beside the repository checkout."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    env = os.environ.get("HALIGN_DATA_DIR")
    # rewards/benchmark_data.py -> the repository root -> its parent, which holds shared/data.
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
