"""A user's own dataset: saved under the runs directory (so runs that use it survive restarts) and
validated by ``distill_core.data.uploads`` before anything uses it. An upload belongs to the session that
made it (``uploads/<hash of the session's secret>/``) unless the person shares it with everyone on
this server (``uploads/shared/``); files of older versions lie directly in ``uploads/`` and count
as shared."""

from __future__ import annotations

import hashlib
from pathlib import Path

from distill_core import data as data_mod
from distill_core.data.datasets import DataError

SUFFIXES = (".npz", ".zip")


def save_and_validate(name: str, raw: bytes, folder: Path) -> tuple[bool, str, Path | None]:
    """(ok, message for the page, saved path or None). A file that does not load is not kept."""
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        return (
            False,
            f"**{name} cannot be used:** upload an .npz or a .zip of class folders, not {suffix or 'a file without extension'}.",
            None,
        )
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(name).stem)[:40] or "data"
    path = folder / f"{stem}-{hashlib.sha256(raw).hexdigest()[:8]}{suffix}"
    path.write_bytes(raw)
    try:
        d = data_mod.load(str(path))
    except DataError as e:
        path.unlink(missing_ok=True)
        return False, f"**{name} cannot be used:** {e}", None
    except MemoryError:  # the limits in distill_core.data.uploads keep most files far from this; never keep the file
        path.unlink(missing_ok=True)
        return False, f"**{name} cannot be used:** it needs more memory than this server has; upload a smaller dataset.", None
    except BaseException:
        path.unlink(missing_ok=True)  # whatever stopped the load, an unusable file is not kept
        raise
    counts = d.class_counts()
    return (
        True,
        (
            f"**{name}** loaded: {d.x_train.shape[0]} training and {d.x_test.shape[0]} test images of "
            f"{d.im_size[0]}×{d.im_size[1]} pixels, {d.num_classes} classes (smallest class: {min(counts)} images)."
        ),
        path,
    )


def listed(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*") if p.suffix.lower() in SUFFIXES) if folder.exists() else []


def session_folder(root: Path, session: str) -> Path:
    """Where a session's own uploads go (named by a hash: the folder never shows the secret)."""
    return root / hashlib.sha256(session.encode()).hexdigest()[:16]


def shared_folder(root: Path) -> Path:
    return root / "shared"


def visible(root: Path, session: str) -> list[str]:
    """The uploads a session may pick: its own, then those shared with everyone."""
    return listed(session_folder(root, session)) + listed(shared_folder(root)) + listed(root)
