"""A user's dataset at the size people have (issue 24): a valid ~100 MB .npz loads through the engine
(the command line's path) and through the app's upload function within a bound on the whole process's
peak resident memory (torch included) and on time, an upload over the app's limit is refused by its
length within a second in one line that names the limit and the command line, and the limit the page
checks and states is the one .streamlit/config.toml gives Streamlit."""
from __future__ import annotations

import mmap
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from ui import uploads

ROOT = Path(__file__).resolve().parent.parent

# 2,100 RGB images of 128x128 (1,680 train, 420 test): 103 MB as uint8 in the file, 413 MB as the
# float32 pixels Data keeps
IMAGES, SIDE = 2100, 128

# Measured on the 2-core development machine, shared and loaded (numpy 2.4, torch 2.14 with CUDA
# libraries, whose import alone holds ~510 MB resident), four runs each:
#   through the engine (data.load):          peak 975 MB every run, 2.5-4.9 s (imports included)
#   through the upload function (the file's  peak 1,073-1,074 MB,   2.7-7.0 s
#   103 MB of bytes held, as the page holds them)
# Before issue 24 the same loads peaked at 1,405 and 1,504 MB (4.8-6.2 s): the uint8 arrays, a float
# copy, a contiguous copy. Peak bounds: measured + 25%, not + 40%: the old code's peaks are measured
# + 44% and + 40%, so a 40% margin would let a second copy of the data back in; resident memory varies
# little between runs (the same to 1 MB here). Time bounds: the slowest run + 40%, rounded up.
ENGINE_PEAK_MB, ENGINE_SECONDS = 1220, 7
UPLOAD_PEAK_MB, UPLOAD_SECONDS = 1345, 10


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


def test_a_100mb_npz_loads_through_the_engine_in_bounded_memory_and_time(npz100):
    peak, seconds, out = measured(
        "from distill_core import data\n"
        "d = data.load(sys.argv[1])\n"
        "print(tuple(d.x_train.shape), tuple(d.x_test.shape), d.x_train.dtype)",
        str(npz100),
    )
    assert out == "(1680, 3, 128, 128) (420, 3, 128, 128) torch.float32"
    assert peak < ENGINE_PEAK_MB, f"peak resident {peak:.0f} MB (bound {ENGINE_PEAK_MB} MB)"
    assert seconds < ENGINE_SECONDS, f"{seconds:.1f} s (bound {ENGINE_SECONDS} s)"


def test_a_100mb_npz_loads_through_the_upload_function_in_bounded_memory_and_time(npz100, tmp_path):
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
    assert peak < UPLOAD_PEAK_MB, f"peak resident {peak:.0f} MB (bound {UPLOAD_PEAK_MB} MB)"
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
