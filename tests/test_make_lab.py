"""`make lab` (dry run only, no server): opens on notebooks/, passes --allow-root only to root."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from semalign_core.paths import REPO_ROOT


def lab_command(tmp_path, uid: int) -> str:
    """What `make -n lab` would run for a user whose `id -u` is ``uid`` (a fake `id` on PATH)."""
    fake = tmp_path / "id"
    fake.write_text(f"#!/bin/sh\necho {uid}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["make", "-n", "lab"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("jupyter lab", 1)[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("uid, allowed", [(0, True), (1000, False)])
def test_lab_allows_root_only_for_root_and_opens_on_notebooks(tmp_path, uid, allowed):
    command = lab_command(tmp_path, uid)
    assert ("--allow-root" in command) is allowed
    assert f"--notebook-dir={REPO_ROOT}" in command
    assert "--ServerApp.default_url=/lab/tree/notebooks" in command
