"""benchmarks/gpu_check.py in its quick CPU mode: every check runs, outputs are finite, the table is complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
CHECKS = ("LaRE (2 draws)", "LaRE² score", "DNF, 1 step", "DNF, 2 steps", "DIRE, 2+2 steps",
          "scan (judge-compact)", "train step: dnf/dire", "train step: lare2", "train step: judge")


def test_quick_cpu_mode_runs_every_check():
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--batch", "1",
                           "--repeats", "0", "--dnf-steps", "2", "--dire-steps", "2", "--dtypes", "fp32,bf16"],
                          capture_output=True, text=True, timeout=600)
    # 1 means some bf16 result left the stated tolerance: a finding the table reports, not a crash.
    assert done.returncode in (0, 1), done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        for check in CHECKS:
            if line.startswith(check):
                dtype, *rest = line[26:].split()
                rows[(check, dtype)] = rest
    assert set(rows) == {(check, dtype) for check in CHECKS for dtype in ("fp32", "bf16")}, done.stdout
    for (check, dtype), rest in rows.items():
        seconds, error, ok = rest[:3]
        note = " ".join(rest[4:])  # none: finite, no exception; DIRE's names its own limit
        assert not note or (check.startswith("DIRE") and note.startswith("limit")), f"{check} {dtype}: {note}"
        if dtype == "fp32":
            assert ok == "yes" and error == "-"
        else:
            assert float(error) >= 0
        if not check.startswith("train"):
            assert float(seconds) > 0
    assert "checks passed" in done.stdout
