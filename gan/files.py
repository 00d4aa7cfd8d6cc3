"""Files that are either whole or absent (write to a unique temporary file, fsync, rename), and
run directories that one process at a time may write."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from gan.errors import UserError

CLAIM_FILE = ".claim"
ANY_FILE = 0o666  # a new file's mode before the umask: readable by others as any file the run makes
# Hydra writes these before a process can claim the directory: the claim keeps the holder's own,
# and a process refused by it puts them back, so that it changes nothing it does not own.
KEPT = (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml")


class ClaimRefused(UserError):
    """The run directory is being written by another live process."""


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` only if the block completes.

    The temporary file has a unique name in the same directory (parallel jobs never share it), is
    fsynced before the rename, and is removed if anything fails: readers see the old file or the
    new one, never a part, even after a crash of the process or the machine.
    """
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself reaches the disk
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _temporary(path: Path) -> tuple[int, str]:
    """A new file beside ``path`` (an open descriptor and its name), whose name a claim's holder
    removes if a kill left it (``remove_partials``)."""
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.partial")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, ANY_FILE), tmp


def create_whole(path: Path, text: str) -> bool:
    """Creates ``path`` holding ``text``, exclusively: False if it exists. Readers never see it
    empty or cut: the text goes to a temporary name first, then is hard-linked into place."""
    path = Path(path)
    fd, tmp = _temporary(path)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create, then write
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, ANY_FILE)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def remove_partials(directory: Path) -> list[Path]:
    """Deletes the temporary files of ``atomic_file`` and ``create_whole`` writes that a killed
    process left behind (only safe while ``directory`` is claimed: no other writer can be
    mid-write; a process that tries to claim it meanwhile is refused all the same)."""
    leftovers = sorted(Path(directory).glob(".*.partial"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


@contextmanager
def claimed(directory: Path) -> Iterator[None]:
    """Holds ``directory`` for this process: ``.claim`` is created exclusively and whole
    (``create_whole``) and removed on exit. A claim whose process is gone (same host, no such
    pid) is taken over; a live one is a UserError, so two processes never write one run
    directory (two taking over one stale claim included: ``_claim_lock``)."""
    directory = Path(directory)
    path = directory / CLAIM_FILE
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%F %T"),
        "kept": _kept(directory),
        **_slurm_job(),
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _claim_lock(directory):
            while not create_whole(path, json.dumps(me)):
                _refuse_live_claim(path, directory)
                path.unlink(missing_ok=True)  # the holder is gone: take it over
    except OSError as err:
        raise UserError(
            f"run directory {directory} cannot be written ({err.strerror or err}); give the run "
            "a writable directory (hydra.run.dir=..., or fix its permissions)"
        ) from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def _claim_lock(directory: Path) -> Iterator[None]:
    """One process at a time looks at ``directory``'s claim and replaces a stale one: else two
    could both find it stale, and the later one delete the claim the earlier one had just made.
    An exclusive flock on the directory itself (no file of its own), held for that moment only;
    none where the filesystem has no flock."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_claim(directory: Path) -> bool:
    """Deletes ``directory``'s claim if its process is gone (``claim_is_stale``); False if a live
    process holds it."""
    claim = Path(directory) / CLAIM_FILE
    with _claim_lock(claim.parent):
        if claim.exists() and not claim_is_stale(claim.parent):
            return False
        claim.unlink(missing_ok=True)
        return True


def keep_current(directory: Path) -> None:
    """This process's claim on ``directory`` keeps the KEPT files as they are now (after this
    process rewrote them, as a resume does): a process refused meanwhile puts these back, not
    the ones from before."""
    path = Path(directory) / CLAIM_FILE
    holder = json.loads(path.read_text())
    if holder.get("pid") != os.getpid() or holder.get("host") != socket.gethostname():
        raise RuntimeError(f"{path} is not this process's claim")
    with atomic_file(path) as f:
        f.write(json.dumps({**holder, "kept": _kept(directory)}).encode())


def _kept(directory: Path) -> dict[str, str]:
    kept = {}
    for name in KEPT:
        try:
            kept[name] = (directory / name).read_text()
        except (OSError, ValueError):
            pass
    return kept


def _put_back(directory: Path, kept: object) -> None:
    """Restores the holder's KEPT files that differ (this process's Hydra overwrote them)."""
    if not isinstance(kept, dict):
        return
    for name in KEPT:
        text = kept.get(name)
        path = directory / name
        try:
            if isinstance(text, str) and path.read_text() != text:
                with atomic_file(path) as f:
                    f.write(text.encode())
        except OSError:
            pass  # not ours to fix further: the refusal below says what happened


def claim_is_stale(directory: Path) -> bool:
    """True if ``directory`` holds a claim of a process on this host that is gone."""
    try:
        holder = json.loads((Path(directory) / CLAIM_FILE).read_text())
    except (OSError, ValueError):
        return False
    return holder.get("host") == socket.gethostname() and not _alive(_pid(holder))


def _pid(holder: dict) -> int:
    pid = holder.get("pid")
    return pid if isinstance(pid, int) else -1


def _refuse_live_claim(path: Path, directory: Path) -> None:
    try:
        holder = json.loads(path.read_text())
    except PermissionError:  # another user's (a shared directory): live, as far as we know
        raise ClaimRefused(
            f"run directory {directory} is claimed by another user's process ({path} cannot be "
            "read here); give this run its own directory (hydra.run.dir=...)"
        ) from None
    except (OSError, ValueError):
        return  # not a claim this code wrote (it writes them whole): nobody holds it
    if not isinstance(holder, dict):
        return  # not a claim this code wrote: nobody holds it
    same_host = holder.get("host") == socket.gethostname()
    if (same_host and not _alive(_pid(holder))) or _requeued(holder):
        return
    _put_back(directory, holder.get("kept"))
    raise ClaimRefused(
        f"run directory {directory} is being written by another process (pid {holder.get('pid')} "
        f"on {holder.get('host')}, since {holder.get('since')}); two runs must not share it. "
        f"Wait for it, or give this run its own directory (hydra.run.dir=...); if no such run is "
        f"going on, delete {path}"
    )


def _slurm_job() -> dict[str, Any]:
    """This process's SLURM job and how often SLURM requeued it ({} outside SLURM)."""
    job = os.environ.get("SLURM_JOB_ID")
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    if not job:
        return {}
    return {"slurm_job": job, "slurm_restart": int(restarts) if restarts.isdigit() else 0}


def _requeued(holder: dict) -> bool:
    """True if the claim is this SLURM job's own from before SLURM requeued it (preempted or its
    node failed): that process is gone, on whatever node it ran."""
    mine, theirs = _slurm_job(), holder.get("slurm_restart")
    return bool(
        mine
        and holder.get("slurm_job") == mine["slurm_job"]
        and isinstance(theirs, int)
        and theirs < mine["slurm_restart"]
    )


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_new_directory(path: Path, key: str) -> None:
    """Raises a UserError unless ``path`` could be made as a directory here: each name within the
    filesystem's limit, and its nearest existing ancestor a writable directory."""
    path = Path(path).absolute()
    limit = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    long = [part for part in path.parts if len(part.encode()) > limit]
    if long:
        raise UserError(
            f"{key}={path}: the name {long[0][:40]}… is {len(long[0].encode())} bytes, longer than "
            f"the {limit} a file name may have here; choose a shorter {key}"
        )
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        what = "is not a directory" if not ancestor.is_dir() else "cannot be written"
        raise UserError(f"{key}={path}: {ancestor} {what}; choose another {key}")
