"""Writing into output folders that others may write into too, without following their links.

Whoever can write into a shared output folder can plant a symbolic link where a run is about
to write (its lock, its config, a temporary file), so that the write lands on the link's
target: a file elsewhere that the trainer's user may write (as root: any file). Every write
of a run goes through one of three ways that never follow a link:

- a new file is created under an unpredictable name with O_EXCL, which fails on any name that
  exists, a link included, instead of writing through it;
- a finished file is renamed over its final name: a rename replaces a link standing there, it
  never writes through it;
- a file written where it stands (the lock, the CSV a row is appended to) is opened with
  O_NOFOLLOW, so a link there is an error (ELOOP), and it must be a regular file with one name.
"""

import errno
import os
import secrets
import stat
from pathlib import Path

NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def temporary_name(path: Path, suffix: str = ".tmp") -> Path:
    """A hidden name beside `path` that nobody can guess: .<name>.<16 hex digits><suffix>."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}{suffix}")


def create_new(path: Path):
    """Open a new file for binary writing; fails if anything (a link too) has that name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW
    return os.fdopen(os.open(path, flags, 0o666), "wb")


def open_in_place(path: Path, flags: int, single: bool = True):
    """os.open of an existing or new file without following a link; the file must be a
    regular file (not a pipe or a device) and, if `single`, have no second name (a planted
    hard link would write elsewhere too). Returns the descriptor; raises OSError naming the
    file otherwise."""
    descriptor = os.open(path, flags | NO_FOLLOW | os.O_NONBLOCK, 0o666)
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or (single and info.st_nlink > 1):
        os.close(descriptor)
        raise OSError(errno.EPERM, "not a plain file of its own (a link?)", str(path))
    os.set_blocking(descriptor, True)
    return descriptor


def write_atomically(path: Path, data: bytes | str, link: Path | None = None) -> None:
    """Write data to `path` through a new temporary file and a rename, so that a reader (or a
    crash) never sees half a file and a link planted at `path` is replaced, not followed.
    link: a second name for the same file (a hard link, e.g. `latest`), renamed into place
    after `path`. A failure leaves no temporary file behind."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    second = None if link is None else temporary_name(link)
    try:
        with create_new(temporary) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            written = os.fstat(handle.fileno()).st_ino
        if second is not None:
            os.link(temporary, second, follow_symlinks=False)
        for name in (temporary, second):  # still ours: nobody swapped a link in meanwhile
            if name is not None and os.lstat(name).st_ino != written:
                raise OSError(errno.EPERM, "replaced by another process while written", str(name))
        os.replace(temporary, path)
        if second is not None:
            os.replace(second, link)
    except BaseException:
        for name in (temporary, second):
            if name is not None:
                name.unlink(missing_ok=True)
        raise


def links_among(paths) -> list:
    """Those of `paths` that are symbolic links (a run refuses to start on any)."""
    return [Path(p) for p in paths if Path(p).is_symlink()]


def refuse_links(root: Path, folders, run: str) -> None:
    """Raise ValueError (one line) if an output folder under root, or a file of the run in
    one, is a symbolic link: writes through it would land elsewhere. --outdir itself may be
    a link: the user named it."""
    names = {
        "checkpoints": [f"{run}.lock", f"{run}.yml", f"{run}_*.pth"],
        "metrics": [f"{run}.csv"],
        "plots": [f"{run}.html", "plotly.min.js"],
        "videos": [f"{run}_*.mp4"],
    }
    for folder in folders:
        place = Path(root) / folder
        if place.is_symlink():
            raise ValueError(
                f"{place} is a symbolic link (to {os.readlink(place)}): refusing to write "
                "through it; make it a folder, or give the other disk as --outdir"
            )
        for pattern in names.get(folder, []):
            for path in place.glob(pattern):
                if path.is_symlink():
                    raise ValueError(
                        f"{path} is a symbolic link (to {os.readlink(path)}): a run's files "
                        "must be plain files; remove the link (or move its target there)"
                    )
