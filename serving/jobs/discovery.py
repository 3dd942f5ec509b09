"""Finding the images of a batch job: a streaming, stable-order walk of a folder tree.

Only one directory's entries are held in memory at a time (plus the stack of directories still to visit),
so a tree of millions of files never becomes one list. The order is deterministic (entries sorted by name,
depth first), so a rerun walks the same files in the same order and resume can skip what is done.
Hidden entries and files Pillow does not read are skipped and counted; unreadable sub-folders are warned
about and counted, never fatal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path

from cnnserve.serving.errors import FolderNotFoundError

LOG = logging.getLogger(__name__)


class ImageExtensions:
    """The file extensions (lower case, with the dot) of every format this Pillow build can open.

    The common formats (Pillow's preinit: BMP, GIF, JPEG, PBM/PGM/PPM, PNG) answer at once; the full list
    needs `Image.init()`, which imports every plugin (tens of milliseconds of CPU), so it is loaded only when
    an extension outside the common ones turns up.
    """

    def __init__(self) -> None:
        from PIL import Image

        Image.preinit()
        self._known = self._opened(Image.EXTENSION)
        self._complete = False

    @staticmethod
    def _opened(extensions: dict[str, str]) -> frozenset[str]:
        from PIL import Image

        return frozenset(ext.lower() for ext, fmt in extensions.items() if fmt in Image.OPEN)

    def __contains__(self, extension: object) -> bool:
        if extension in self._known:
            return True
        if not self._complete:
            from PIL import Image

            Image.init()
            self._known = self._opened(Image.EXTENSION)
            self._complete = True
            return extension in self._known
        return False


@dataclass
class DiscoveryStats:
    """What the walk saw besides the images it yielded (filled in as it goes)."""

    images: int = 0
    skipped_hidden: int = 0
    skipped_non_image: int = 0
    denied_folders: int = 0

    @property
    def skipped(self) -> int:
        return self.skipped_hidden + self.skipped_non_image


def check_folder(root: Path) -> Path:
    """The folder, resolved; a clear error before any work starts when it is missing or a file."""
    if not root.exists():
        raise FolderNotFoundError(f"folder {root} does not exist")
    if not root.is_dir():
        raise FolderNotFoundError(f"{root} is not a folder")
    return root


def iter_images(
    root: Path,
    recursive: bool = True,
    stats: DiscoveryStats | None = None,
    extensions: Container[str] | None = None,
    warn: bool = True,
) -> Iterator[str]:
    """Yield image paths relative to `root` (POSIX separators), sorted by name, depth first.

    Sub-folders are visited after the files of their parent, in name order, so the order is stable and
    independent of the file system's own listing order.
    """
    check_folder(root)
    stats = stats if stats is not None else DiscoveryStats()
    extensions = extensions if extensions is not None else ImageExtensions()
    stack: list[tuple[str, str]] = [(str(root), "")]  # (absolute folder, relative prefix)
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except PermissionError as error:
            stats.denied_folders += 1
            if warn:
                LOG.warning("skipping folder %s: permission denied (%s)", folder, error.strerror)
            continue
        except OSError as error:
            stats.denied_folders += 1
            if warn:
                LOG.warning("skipping folder %s: %s", folder, error)
            continue
        subfolders: list[tuple[str, str]] = []
        for entry in entries:
            if entry.name.startswith("."):
                stats.skipped_hidden += 1
                continue
            try:
                # Symbolic links to folders are not followed (as os.walk): a link loop must not hang the job.
                is_dir = entry.is_dir(follow_symlinks=False)
                linked_dir = not is_dir and entry.is_symlink() and entry.is_dir()
            except OSError:
                is_dir = linked_dir = False
            if linked_dir:
                LOG.info("not following the folder link %s", entry.path)
                continue
            if is_dir:
                if recursive:
                    subfolders.append((entry.path, f"{prefix}{entry.name}/"))
                continue
            dot = entry.name.rfind(".")
            extension = entry.name[dot:].lower() if dot > 0 else ""  # as os.path.splitext, but cheaper
            if extension not in extensions:
                stats.skipped_non_image += 1
                continue
            stats.images += 1
            yield f"{prefix}{entry.name}"
        # Reverse so that popping from the stack visits sub-folders in name order.
        stack.extend(reversed(subfolders))


def count_images(
    root: Path,
    recursive: bool = True,
    exclude: set[str] | frozenset[str] = frozenset(),
    key: Callable[[str], str] = str,
) -> int:
    """How many images a walk will yield whose `key(path)` is not in `exclude` (for the progress bar's
    total)."""
    return sum(1 for path in iter_images(root, recursive, warn=False) if key(path) not in exclude)
