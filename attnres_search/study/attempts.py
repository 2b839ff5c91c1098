"""Run folders of a study's trials: one folder per attempt, checkpoints handed on safely.

Two processes must never write the same run folder: a worker whose trial was failed as
stale may still be running it while the retry starts. So every trial attempt writes its
own folder, ``runs/<study>/<cell-slug>-<fingerprint>/attempt-<trial number>``, and a retry
continues from the checkpoint of an earlier attempt of the same cell by *copying* it into
its own folder, never by writing into the other's.

The fingerprint hashes the study's identity (a random id stored at creation) and the
trial's resolved run config, less the fields a checkpoint may differ in. A checkpoint
from another study that reused the name (in a new storage) or from another config
(different tokens, say) therefore lives in another folder and is never picked up.

A copied checkpoint is checked before use (it is a zip archive: every member's CRC must
match). A corrupt one, e.g. truncated by a full disk or a kill while it was written, is
moved aside with a warning, and the next older attempt's is tried, else the trial starts
from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

_ATTEMPT = re.compile(r"attempt-(\d+)")
FINGERPRINT_CHARS = 12
log = logging.getLogger(__name__)


def fingerprint(identity: str, config: Mapping[str, Any], free_fields: Iterable[str]) -> str:
    """A short hash of the study identity and the run config, less ``free_fields`` (those
    a run may change and still resume, e.g. ``out_dir`` or ``devices``)."""
    free = set(free_fields)
    kept = {k: v for k, v in config.items() if k not in free}
    text = json.dumps({"study": identity, "config": kept}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]


def cell_dir(runs_dir: Path, slug: str, print_: str) -> Path:
    """The folder that holds every attempt of one cell x seed of one study and config."""
    return runs_dir / f"{slug}-{print_}"


def attempt_dir(cell: Path, number: int) -> Path:
    """The run folder of the trial with this number (one attempt of its cell)."""
    return cell / f"attempt-{number}"


def earlier_attempts(cell: Path, number: int) -> list[tuple[int, Path]]:
    """Attempts of the cell made by trials numbered below ``number``, newest first."""
    if not cell.is_dir():
        return []
    found = []
    for path in cell.iterdir():
        match = _ATTEMPT.fullmatch(path.name)
        if match and int(match.group(1)) < number and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def checkpoint_is_sound(path: Path) -> bool:
    """True when ``path`` is a complete zip archive (what ``torch.save`` writes) whose
    members all match their CRCs; a truncated or overwritten file is not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None and bool(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def adopt_checkpoint(cell: Path, number: int, target: Path, relative: Path,
                     note: Callable[[str], None]) -> int | None:
    """Copy the newest sound checkpoint of an earlier attempt into ``target`` (this
    attempt's ``last.ckpt``); ``relative`` is where a checkpoint lies inside an attempt
    folder. Corrupt copies are moved aside (``<target>.corrupt-attempt-N``) with a warning
    through ``note`` and the logger. Returns the attempt number adopted, or None."""
    tried = False
    for other, folder in earlier_attempts(cell, number):
        source = folder / relative
        if not source.is_file():
            continue
        tried = True
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".adopting")
        shutil.copyfile(source, partial)  # a snapshot: the other attempt's folder is only read
        if checkpoint_is_sound(partial):
            partial.replace(target)
            note(f"continuing from the checkpoint of attempt {other} ({source})")
            return other
        aside = target.with_name(f"{target.name}.corrupt-attempt-{other}")
        partial.replace(aside)
        message = (f"warning: the checkpoint of attempt {other} ({source}) is corrupt (truncated or damaged); "
                   f"moved this attempt's copy aside to {aside}")
        log.warning(message)
        note(message)
    if tried:
        note("no usable checkpoint of an earlier attempt: starting from scratch")
    return None
