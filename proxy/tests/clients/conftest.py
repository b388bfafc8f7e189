"""Shared fixtures for tests that drive shardgate with real Python clients."""
import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shardgate_bin() -> str:
    path = os.environ.get("SHARDGATE_BIN")
    if not path or not Path(path).exists():
        pytest.fail("SHARDGATE_BIN is not set to a built shardgate binary; run conf/test.sh")
    return path


def run(bin_path: str, *args: str, cwd: Path) -> str:
    out = subprocess.run([bin_path, *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"shardgate {args}: {out.stderr}"
    return out.stdout
