"""The spool: received instances on disk, written atomically, named by hashed UIDs.

A file is first written to a temporary name in its final folder and fsynced, then renamed
over its final name and the folder is fsynced; a folder the write had to create is made
durable the same way (its parent is fsynced). A crash or power cut leaves either the complete
file or none (plus perhaps a ``.tmp-*`` file that :meth:`Spool.remove_temporary_files` cleans
at start-up). Paths are ``<study>/<series>/<instance>.dcm`` with each level the SHA-256 of the
UID cut to 32 hex digits, so no UID (nor any peer-chosen text) ends up in a file name.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from dicom_node.errors import DiskFullError, SpoolError

logger = logging.getLogger(__name__)

#: Hex digits of each path component.
PATH_DIGEST_CHARS = 32
#: Prefix of files being written.
TEMP_PREFIX = ".tmp-"


def _component(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:PATH_DIGEST_CHARS]


class Spool:
    """A folder of received instances with a free-space floor.

    Parameters
    ----------
    root
        The spool folder (created when missing).
    min_free_bytes
        Refuse a write that would leave less free space than this on the spool's file system.

    Raises
    ------
    SpoolError
        When the folder cannot be created.
    """

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes}")
        self.root = root
        self.min_free_bytes = min_free_bytes
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool folder {root}: {exc}") from exc

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Path of an instance relative to the spool folder (same UIDs, same path)."""
        return (
            Path(_component(study_uid))
            / _component(series_uid)
            / f"{_component(sop_instance_uid)}.dcm"
        )

    def free_bytes(self) -> int:
        """Free space on the spool's file system, in bytes."""
        return shutil.disk_usage(self.root).free

    def has_room(self, size: int) -> bool:
        """Whether `size` more bytes still leave ``min_free_bytes`` free."""
        return self.free_bytes() - size >= self.min_free_bytes

    def write(self, relative: Path, data: bytes) -> Path:
        """Write `data` atomically to `relative` under the spool folder.

        Parameters
        ----------
        relative
            Path from :meth:`relative_path`.
        data
            The complete file (preamble, file meta information and data set).

        Returns
        -------
        Path
            The absolute path written.

        Raises
        ------
        DiskFullError
            When the write would leave less than ``min_free_bytes`` free, or the file system
            is full; nothing is left behind.
        SpoolError
            For any other I/O error; nothing is left behind.
        """
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"spool paths must be relative and inside the spool: {relative}")
        if not self.has_room(len(data)):
            raise DiskFullError(
                f"less than {self.min_free_bytes} bytes would remain free in {self.root}"
            )
        target = self.root / relative
        temp_name: str | None = None
        try:
            self._make_folders(target.parent)
            fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp_name, target)
            temp_name = None
            _fsync_directory(target.parent)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"the file system of {self.root} is full") from exc
            raise SpoolError(f"cannot write {relative} in {self.root}: {exc}") from exc
        finally:
            if temp_name is not None:
                Path(temp_name).unlink(missing_ok=True)
        return target

    def _make_folders(self, folder: Path) -> None:
        """Create `folder` and its missing parents, durably.

        A folder's name lives in its parent: each parent that gains one is fsynced, so a
        power cut cannot lose the folder of a file whose write was already acknowledged.
        """
        if folder.is_dir():
            return
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for created in reversed(missing):
            # exist_ok: a concurrent association may create the same folder; fsync its
            # parent anyway, the other writer may not have done so yet.
            created.mkdir(exist_ok=True)
            _fsync_directory(created.parent)

    def read(self, relative: Path) -> bytes | None:
        """The bytes of a spooled file, or None when it is missing or unreadable."""
        try:
            return (self.root / relative).read_bytes()
        except OSError:
            return None

    def remove(self, relative: Path) -> None:
        """Delete a spooled file (missing files are ignored)."""
        (self.root / relative).unlink(missing_ok=True)

    def remove_temporary_files(self) -> int:
        """Delete half-written files left by a crash; returns how many were removed."""
        removed = 0
        for path in self.root.rglob(f"{TEMP_PREFIX}*"):
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.warning("removed %d half-written file(s) from the spool", removed)
        return removed


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to the file descriptor (os.write may write fewer)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(folder: Path) -> None:
    """Make a rename durable: fsync the folder holding the new name."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["PATH_DIGEST_CHARS", "TEMP_PREFIX", "Spool"]
