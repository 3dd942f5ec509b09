"""Batch-job discovery: stable order; hidden files, non-images, unreadable folders skipped and counted."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from cnnserve.serving.errors import FolderNotFoundError
from cnnserve.serving.jobs.discovery import DiscoveryStats, count_images, iter_images


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for relative in ["b.png", "a.PNG", "z/y.png", "z/a/x.jpg", "m/n.png", "c.bmp"]:
        _png(root / relative)
    (root / "notes.txt").write_text("not an image")
    (root / "data.npy").write_bytes(b"\x93NUMPY")
    _png(root / ".hidden.png")
    _png(root / ".cache" / "inside.png")
    return root


def test_walk_is_sorted_depth_first_and_counts_what_it_skips(tree: Path) -> None:
    stats = DiscoveryStats()
    found = list(iter_images(tree, stats=stats))
    assert found == ["a.PNG", "b.png", "c.bmp", "m/n.png", "z/y.png", "z/a/x.jpg"]
    assert (stats.images, stats.skipped_hidden, stats.skipped_non_image, stats.denied_folders) == (6, 2, 2, 0)
    # Stable: a second walk gives the same order, and counting agrees with it.
    assert list(iter_images(tree)) == found
    assert count_images(tree, exclude={"b.png"}) == 5


def test_no_recursive_stays_in_the_top_folder(tree: Path) -> None:
    assert list(iter_images(tree, recursive=False)) == ["a.PNG", "b.png", "c.bmp"]


def test_walk_streams(tree: Path) -> None:
    walk = iter_images(tree)
    assert next(walk) == "a.PNG"  # a generator: nothing beyond the first folder listed yet
    for index in range(3000):
        (tree / "z" / f"late{index:04d}.png").touch()
    assert sum(1 for _ in walk) == 5 + 3000  # folders listed when reached pick up files added meanwhile


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FolderNotFoundError, match="does not exist"):
        list(iter_images(tmp_path / "nope"))
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(FolderNotFoundError, match="is not a folder"):
        list(iter_images(tmp_path / "file.png"))


def _walk_as(root: Path, user: int | None) -> dict:
    """Walk in a forked child, as `user` if given: root ignores file modes, an unprivileged user does not."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: already has every module loaded, so it needs no file but the tree
        status = 1
        try:
            os.close(read_end)
            if user is not None:
                os.setgid(user)
                os.setuid(user)
            messages: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
            logging.getLogger("cnnserve.serving.jobs.discovery").addHandler(handler)
            stats = DiscoveryStats()
            found = list(iter_images(root, stats=stats))
            payload = {"found": found, "denied": stats.denied_folders, "warnings": messages}
            os.write(write_end, json.dumps(payload).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


def test_permission_denied_folder_is_warned_counted_and_skipped() -> None:
    # Under a world-readable temporary folder so that, when the tests run as root (who ignores file modes),
    # the walk can run as an unprivileged user instead.
    with tempfile.TemporaryDirectory(prefix="batch-denied-") as scratch:
        root = Path(scratch) / "images"
        _png(root / "ok.png")
        _png(root / "locked" / "secret.png")
        _png(root / "open" / "fine.png")
        for folder in (Path(scratch), root, root / "open"):
            folder.chmod(0o755)
        (root / "locked").chmod(0o000)
        try:
            result = _walk_as(root, 65534 if os.geteuid() == 0 else None)
        finally:
            (root / "locked").chmod(0o755)
    assert result["found"] == ["ok.png", "open/fine.png"]
    assert result["denied"] == 1
    assert any("locked" in m and "permission denied" in m for m in result["warnings"]), result["warnings"]


def test_folder_links_are_not_followed(tree: Path) -> None:
    (tree / "z" / "loop").symlink_to(tree, target_is_directory=True)  # would recurse forever if followed
    (tree / "link.png").symlink_to(tree / "b.png")  # a link to a file is an image like any other
    assert list(iter_images(tree)) == [
        "a.PNG",
        "b.png",
        "c.bmp",
        "link.png",
        "m/n.png",
        "z/y.png",
        "z/a/x.jpg",
    ]


def test_image_extensions_load_every_plugin_only_for_an_uncommon_extension() -> None:
    code = (
        "from PIL import Image\n"
        "from cnnserve.serving.jobs.discovery import ImageExtensions\n"
        "known = ImageExtensions()\n"
        "common = ['.png' in known, '.jpg' in known, '.bmp' in known]\n"
        "before = Image._initialized\n"
        "rare = ['.tif' in known, '.webp' in known, '.txt' in known, '.npy' in known]\n"
        "print(common, before, rare, Image._initialized)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[True, True, True] 1 [True, True, False, False] 2"
