"""The committed stubs must match what generate.sh makes from the proto today."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "src" / "tokenvend_client" / "_pb"


def _files(base: Path) -> set:
    return {p.relative_to(base) for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_committed_stubs_are_up_to_date(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(ROOT / "generate.sh"), str(tmp_path)], check=True, env=env)

    assert _files(tmp_path) == _files(COMMITTED)
    stale = [
        str(p)
        for p in sorted(_files(tmp_path))
        if not filecmp.cmp(tmp_path / p, COMMITTED / p, shallow=False)
    ]
    assert not stale, f"stubs out of date, run client/python/generate.sh: {stale}"
