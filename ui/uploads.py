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
# the largest upload the app takes, in Streamlit's MB (2**20 bytes): .streamlit/config.toml's
# server.maxUploadSize holds the same number (tests/test_upload_memory.py checks), the caption beside
# the upload button states it, and save_and_validate refuses a larger payload by its length alone
MAX_UPLOAD_MB = 200
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 2**20
CLI_HINT = "python -m distill_core run --dataset /path/to/file.npz"


def upload_caption() -> str:
    return f"Files up to {MAX_UPLOAD_MB} MB. For a larger dataset use the command line: `{CLI_HINT}`."


def size_text(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def payload_size(raw) -> int:
    """Bytes of a bytes-like payload (bytes, a memoryview of the uploaded file, an mmap), read from its
    buffer's length: nothing is copied or parsed."""
    with memoryview(raw) as view:
        return view.nbytes


def too_large(name: str, raw) -> str | None:
    """The one-line refusal of a payload over ``MAX_UPLOAD_BYTES``, or None."""
    size = payload_size(raw)
    if size <= MAX_UPLOAD_BYTES:
        return None
    return (
        f"**{name} cannot be used:** this file is {size_text(size)}; the app takes uploads up to {MAX_UPLOAD_MB} MB: "
        f"for a larger dataset use `{CLI_HINT}`."
    )


def save_and_validate(name: str, raw, folder: Path) -> tuple[bool, str, Path | None]:
    """(ok, message for the page, saved path or None). A file that does not load is not kept. ``raw``:
    the file's bytes, any bytes-like object (the page passes a view of the uploaded file: no copy);
    one over ``MAX_UPLOAD_BYTES`` is refused by its length, before it is hashed, written or parsed."""
    refusal = too_large(name, raw)
    if refusal:
        return False, refusal, None
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
