"""A user's dataset at the size people have (issue 24): a valid ~100 MB .npz loads through the engine
(the command line's path) and through the app's upload function within a bound on what it adds to the
process's peak resident memory (over the imports', torch included) and on time, an upload over the app's limit is refused by its
length within a second in one line that names the limit and the command line, and the limit the page
checks and states is the one .streamlit/config.toml gives Streamlit."""
from __future__ import annotations

import mmap
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib

from ui import uploads

ROOT = Path(__file__).resolve().parent.parent

# 2,100 RGB images of 128x128 (1,680 train, 420 test): 98 MiB as uint8 in the file, kept as those
# uint8 bytes (413 MB as float32 pixels, which Data kept before the bytes were)
IMAGES, SIDE = 2100, 128

# The bounds are on what loading adds to the resident memory of a process that has imported the
# engine (torch's import alone holds ~510 MB here, and differs between machines), in units of the
# file's size. Measured on the 2-core development machine (numpy 2.4, torch 2.14 with CUDA
# libraries), three runs each, the same to 1 MB:
#   through the engine (data.load):          + 181 MB = 1.84 x the file, 2.8-3.3 s (imports included)
#   through the upload function (the file's  + 280 MB = 2.84 x the file, 3.0-3.4 s
#   bytes held, as the page holds them)
# Float32 pixels (issue 24's first step) added 464 and 563 MB, before it 894 and 993 MB. Bounds:
# measured + 25%; a float32 copy of the images (4 x the file) or a second copy of the bytes does not fit.
ENGINE_GROWTH, ENGINE_SECONDS = 2.3, 7
UPLOAD_GROWTH, UPLOAD_SECONDS = 3.55, 10


@pytest.fixture(scope="module")
def imported_mb() -> float:
    """Peak resident MB of a fresh process that imports what the loads below import."""
    return measured("from distill_core import data\nfrom ui import uploads")[0]


@pytest.fixture(scope="module")
def npz100(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload_memory") / "it100.npz"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (IMAGES, SIDE, SIDE, 3), dtype=np.uint8)
    y = np.arange(IMAGES) % 10
    n = IMAGES * 4 // 5
    np.savez(path, x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:])
    assert 90 * 2**20 < path.stat().st_size < uploads.MAX_UPLOAD_BYTES  # about 100 MB, under the app's limit
    return path


def measured(code: str, *args: str) -> tuple[float, float, str]:
    """(peak resident MB of a fresh process running ``code``, its seconds, its last output line).

    The peak is the process's own VmHWM: ``getrusage``'s ru_maxrss survives exec on Linux, so a child
    started from a large pytest process (vfork, then exec) reported the parent's resident size."""
    script = (
        "import re, sys, time\n"
        "t0 = time.time()\n"
        f"{code}\n"
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
        "print(hwm / 1024, time.time() - t0)\n"
    )
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    seconds = time.time() - start
    *lines, last = out.strip().splitlines()
    peak, _inside = (float(v) for v in last.split())
    return peak, seconds, "\n".join(lines)


def growth(peak_mb: float, imported: float, path: Path) -> float:
    """What a load added to the process's peak resident memory, in units of the file's size."""
    return (peak_mb - imported) * 2**20 / path.stat().st_size


def test_a_100mb_npz_loads_through_the_engine_in_bounded_memory_and_time(npz100, imported_mb):
    peak, seconds, out = measured(
        "from distill_core import data\n"
        "d = data.load(sys.argv[1])\n"
        "print(tuple(d.x_train.shape), tuple(d.x_test.shape), d.x_train.dtype)",
        str(npz100),
    )
    assert out == "(1680, 3, 128, 128) (420, 3, 128, 128) torch.float32"  # what a read gives
    grew = growth(peak, imported_mb, npz100)
    assert grew < ENGINE_GROWTH, f"peak resident {peak:.0f} MB, {grew:.2f} x the file over the imports' {imported_mb:.0f} MB (bound {ENGINE_GROWTH})"
    assert seconds < ENGINE_SECONDS, f"{seconds:.1f} s (bound {ENGINE_SECONDS} s)"


def test_a_100mb_npz_loads_through_the_upload_function_in_bounded_memory_and_time(npz100, tmp_path, imported_mb):
    peak, seconds, out = measured(
        "from pathlib import Path\n"
        "from ui import uploads\n"
        "raw = Path(sys.argv[1]).read_bytes()  # as the page holds an uploaded file\n"
        "ok, message, path = uploads.save_and_validate('it100.npz', raw, Path(sys.argv[2]))\n"
        "print(ok, path is not None and path.exists())",
        str(npz100),
        str(tmp_path / "uploads"),
    )
    assert out == "True True"
    grew = growth(peak, imported_mb, npz100)
    assert grew < UPLOAD_GROWTH, f"peak resident {peak:.0f} MB, {grew:.2f} x the file over the imports' {imported_mb:.0f} MB (bound {UPLOAD_GROWTH})"
    assert seconds < UPLOAD_SECONDS, f"{seconds:.1f} s (bound {UPLOAD_SECONDS} s)"


@pytest.mark.parametrize("suffix", [".npz", ".zip"])
def test_an_upload_over_the_limit_is_refused_by_its_length_within_a_second(tmp_path, suffix):
    big = tmp_path / f"big{suffix}"
    with open(big, "wb") as f:
        f.truncate(2 * 2**30)  # a sparse 2 GB file: nothing on disk, nothing in memory
    folder = tmp_path / "uploads"
    with open(big, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as raw:  # bytes-like, len 2 GB
        start = time.time()
        ok, message, path = uploads.save_and_validate(big.name, raw, folder)
        seconds = time.time() - start
    assert not ok and path is None and seconds < 1
    assert message == (
        f"**big{suffix} cannot be used:** this file is 2.0 GB; the app takes uploads up to 200 MB: "
        "for a larger dataset use `python -m distill_core run --dataset /path/to/file.npz`."
    )
    assert "\n" not in message and not folder.exists()  # nothing written, not even the folder


def test_an_upload_at_the_limit_is_judged_by_its_content_not_refused_for_size(tmp_path):
    raw = bytearray(uploads.MAX_UPLOAD_BYTES)  # exactly the limit: not refused for its size
    ok, message, path = uploads.save_and_validate("limit.npz", raw, tmp_path)
    assert not ok and "not a readable .npz" in message and path is None and list(tmp_path.iterdir()) == []
    assert uploads.too_large("over.npz", bytearray(uploads.MAX_UPLOAD_BYTES + 1))


def test_the_limit_is_the_one_streamlit_is_given_and_the_page_states():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == uploads.MAX_UPLOAD_MB == 200
    assert uploads.MAX_UPLOAD_BYTES == uploads.MAX_UPLOAD_MB * 2**20  # Streamlit's MB
    caption = uploads.upload_caption()
    assert f"{uploads.MAX_UPLOAD_MB} MB" in caption and "python -m distill_core run --dataset" in caption
    page = (ROOT / "views" / "distill.py").read_text()
    assert "st.caption(uploads.upload_caption())" in page
