"""Secrets `cairn up` keeps in its data folder are never readable by others, even for a moment."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cairn_cli.local import write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secret_is_created_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "data" / "admin-token", "s3cret")
    finally:
        os.umask(old)
    assert (tmp_path / "data" / "admin-token").read_text() == "s3cret"
    assert _mode(tmp_path / "data" / "admin-token") == 0o600


def test_replacing_a_world_readable_file_leaves_it_owner_only_and_no_temporary(
    tmp_path: Path,
) -> None:
    path = tmp_path / "nats.conf"
    path.write_text("old")
    path.chmod(0o644)
    stale = tmp_path / f".nats.conf.{os.getpid()}.tmp"
    stale.write_text("half")
    stale.chmod(0o666)
    write_private(path, "new")
    assert path.read_text() == "new"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nats.conf"]
