"""tests/gpu/device_check.sh --smoke: the prepared GPU check runs its whole code path on CPU at tiny sizes.

The GPU machine is only occasionally available; this keeps the script working between its runs.
"""

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_device_check_smoke_writes_its_summary(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    done = subprocess.run([str(REPO / "tests/gpu/device_check.sh"), str(tmp_path), "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "device_check.json").read_text())
    checks = summary["checks"]
    assert not [name for name, record in checks.items() if "error" in record], checks
    for family in ("llava", "qwen2_5_vl"):
        assert checks[f"agreement/{family}/sdpa"]["ok"] and checks[f"agreement/{family}/sdpa, pairs per row"]["ok"]
        for side in ("trl (sdpa)", "fast (sdpa)", "fast (sdpa, pairs per row)"):
            assert checks[f"timing/{family}/{side}"]["seconds_per_step"] > 0
        assert set(summary["ratios"][family]) == {"fast (sdpa)", "fast (sdpa, pairs per row)"}
        assert checks[f"timing/{family}/fast (sdpa, pairs per row)"]["rows"][0] == 1  # both pairs in one row
    assert "backward on CPU" in checks["timing/llava/fast (flex)"]["skipped"]  # flex trains on GPUs only
    for name in ("zero2", "zero3", "qlora", "video_processor"):  # skipped (with the reason) or run, never absent
        assert name in checks
    assert "| agreement/llava/sdpa | ok |" in (tmp_path / "device_check.md").read_text()
