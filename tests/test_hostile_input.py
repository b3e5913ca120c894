"""Hostile input, the rest of issue 12's list: bombs decided from the archive's declared sizes before
anything is inflated, zips of junk refused fast, options and links out of range refused in one line
that names the allowed range, and nothing written or kept when a file or an option is refused."""
from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill_core import cli
from distill_core import data as data_mod
from distill_core.data import uploads as data_uploads
from distill_core.data.datasets import DataError
from distill_core.data.uploads import load_npz, load_zip
from distill_core.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent


def arrays(n: int = 12, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 255, (n, 8, 8), dtype=np.uint8), "y_train": np.arange(n) % classes,
        "x_test": rng.integers(0, 255, (classes, 8, 8), dtype=np.uint8), "y_test": np.arange(classes),
    }


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def npy_header(shape: tuple, dtype: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 300, msg
    return msg


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in files.items():
            zf.writestr(name, raw)
    return path


def class_pngs(classes: list[str], per_class: int, side: int = 8) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {f"{c}/{i}.png": png(rng.integers(0, 255, (side, side), dtype=np.uint8)) for c in classes for i in range(per_class)}


# ---- .npz ---------------------------------------------------------------------------------------


def test_a_deflate_bomb_within_the_value_limit_is_refused_before_inflating(tmp_path, monkeypatch):
    """4 MB of zeros stored in a few kB: refused from the zip's declared sizes, with nothing inflated."""
    monkeypatch.setattr(data_uploads, "RATIO_FROM_BYTES", 2**20)  # the 16 MB threshold, scaled down to a quick file
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, v in arrays().items():
            zf.writestr(f"{k}.npy", npy_header((4096, 32, 32)) + bytes(4096 * 32 * 32) if k == "x_train" else npy(v))
    assert path.stat().st_size < 50_000
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            load_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "x_train.npy in bomb.npz inflates from" in one_line(e) and f"more than {data_uploads.MAX_RATIO} times" in str(e.value)
    assert peak < 1_000_000  # the 4 MB array was never built


def test_arrays_declaring_more_bytes_than_the_limit_are_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(data_uploads, "MAX_NPZ_BYTES", 5_000)
    a = arrays()
    a["x_train"] = a["x_train"].astype(np.float64)  # 12 x 64 x 8 bytes = 6 kB
    np.savez(tmp_path / "wide.npz", **a)
    with pytest.raises(DataError) as e:
        load_npz(tmp_path / "wide.npz")
    assert "(MAX_NPZ_BYTES) by x_train (float64" in one_line(e) and "uint8 or float32" in str(e.value)


def test_labels_whose_header_declares_a_hundred_million_entries_are_refused_unread(tmp_path):
    path = tmp_path / "labels.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in arrays().items():
            zf.writestr(f"{k}.npy", npy_header((10**8,), "<i8") if k == "y_train" else npy(v))
    with pytest.raises(DataError) as e:
        load_npz(path)  # 800 MB of labels declared; the file holds a header only
    assert "y_train in labels.npz declares shape (100000000,) for 12 images" in one_line(e)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_infinite_pixels_are_refused_at_load(tmp_path, value):
    a = arrays()
    x = a["x_train"].astype(np.float32) / 255
    x[3, 2, 1] = value
    a["x_train"] = x
    np.savez(tmp_path / "nan.npz", **a)
    with pytest.raises(DataError) as e:
        load_npz(tmp_path / "nan.npz")
    assert "x_train contains NaN or infinite values" in one_line(e)


# ---- zips of class folders ----------------------------------------------------------------------


def test_a_zip_of_junk_named_like_images_is_refused_after_a_few_tries(tmp_path, monkeypatch):
    files = {f"c{i % 2}/f{i}.png": b"not a png" for i in range(500)}
    tried = []
    real_open = data_uploads.open_image
    monkeypatch.setattr(data_uploads, "open_image", lambda raw, member: tried.append(member) or real_open(raw, member))
    with pytest.raises(DataError) as e:
        load_zip(write_zip(tmp_path / "junk.zip", files))
    assert f"stopped after {data_uploads.MAX_BAD_IMAGES} of 500 image entries" in one_line(e)
    assert len(tried) == data_uploads.MAX_BAD_IMAGES


def test_one_image_file_declaring_too_many_bytes_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(data_uploads, "MAX_IMAGE_BYTES", 10_000)
    files = class_pngs(["a", "b"], 3)
    files["a/huge.bmp"] = bytes(20_000)
    with pytest.raises(DataError) as e:
        load_zip(write_zip(tmp_path / "big.zip", files))
    assert "a/huge.bmp declares 20,000 bytes; an image file may be at most 10,000" in one_line(e)


def test_a_zip_member_that_inflates_absurdly_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data_uploads, "RATIO_FROM_BYTES", 100_000)
    path = tmp_path / "ratio.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, v in class_pngs(["a", "b"], 3).items():
            zf.writestr(k, v)
        zf.writestr("a/zeros.png", bytes(2_000_000))
    with pytest.raises(DataError) as e:
        load_zip(path)
    assert "a/zeros.png in ratio.zip inflates from" in one_line(e)


def test_the_images_pixels_are_capped_before_decoding_the_one_too_many(tmp_path, monkeypatch):
    monkeypatch.setattr(data_uploads, "MAX_ZIP_PIXELS", 5 * 64 * 64)
    decoded = []
    real_decode = data_uploads.decode_image
    monkeypatch.setattr(data_uploads, "decode_image", lambda im: decoded.append(im.size) or real_decode(im))
    with pytest.raises(DataError) as e:
        load_zip(write_zip(tmp_path / "many.zip", class_pngs(["a", "b"], 4, side=64)))
    assert "declare more than 20,480 pixels in all (MAX_ZIP_PIXELS)" in one_line(e)
    assert len(decoded) == 5  # the sixth image was refused from its header


def test_a_large_image_among_small_ones_is_kept_small_and_fits_the_common_size(tmp_path):
    files = class_pngs(["a", "b"], 3)
    files["a/big.png"] = png(np.full((600, 400), 200, dtype=np.uint8))
    d = load_zip(write_zip(tmp_path / "mixed.zip", files))
    assert d.im_size == (8, 8) and d.x_train.shape[0] + d.x_test.shape[0] == 7
    im = data_uploads.decode_image(Image.open(io.BytesIO(files["a/big.png"])))
    assert im.size == (data_uploads.MAX_SIDE * 400 // 600, data_uploads.MAX_SIDE)  # reduced as decoded, aspect kept


def test_a_refused_upload_leaves_nothing_behind(tmp_path, monkeypatch):
    from ui import uploads

    ok, message, path = uploads.save_and_validate("junk.npz", b"not an npz", tmp_path)
    assert not ok and path is None and "junk.npz cannot be used" in message and list(tmp_path.iterdir()) == []

    def out_of_memory(name):
        raise MemoryError

    monkeypatch.setattr(data_mod, "load", out_of_memory)
    ok, message, path = uploads.save_and_validate("big.npz", b"whatever", tmp_path)
    assert not ok and "more memory than this server has" in message and list(tmp_path.iterdir()) == []


# ---- options: the command line's --set and the app's widgets share one check ---------------------


@pytest.mark.parametrize(
    "pair,expected",
    [
        ("lr_img=nan", "lr_img must be a number, got 'nan' (allowed: positive, at most 1e+06)"),
        ("lr_img=NaN", "lr_img must be a number, got nan (allowed: positive, at most 1e+06)"),
        ("lr_img=abc", "lr_img must be a number, got 'abc' (allowed: positive, at most 1e+06)"),
        ("lr_img=1e308", "lr_img must be <= 1e+06, got 1e+308 (allowed: positive, at most 1e+06)"),
        ("lr_img=1e400", "lr_img must be <= 1e+06, got inf"),
        ("lr_img=null", "lr_img cannot be empty (null)"),
        ("batch_real=1000000000", "batch_real must be <= 1e+06, got 1000000000 (allowed: whole numbers 1 to 1e+06)"),
        ("momentum=-Infinity", "momentum must be >= 0, got -inf (allowed: 0 to 0.999)"),
    ],
)
def test_a_bad_option_value_is_one_line_naming_the_range_and_nothing_is_written(tmp_path, capsys, pair, expected):
    out = tmp_path / "out"
    code = cli.main(["run", "--method", "dm", "--iterations", "2", "--set", pair, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: {err[7:]}" and "\n" not in err and expected in err
    assert not out.exists()


def test_options_within_their_range_still_build():
    cfg = METHODS.get("dm").Config(lr_img=1e6, batch_real=1_000_000, momentum=0.0)
    assert cfg.lr_img == 1e6
    with pytest.raises(ValueError, match=r"expert_seed must be >= -1e\+06"):
        METHODS.get("mtt").Config(expert_seed=-(10**7))


def test_a_seed_torch_cannot_take_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--seed", "99999999999999999999", "--out", "unused"])
    assert e.value.code == 2 and "argument --seed: 99999999999999999999 is outside the allowed range" in capsys.readouterr().err


# ---- links --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("runs_dir")
def test_links_with_numbers_a_widget_cannot_hold_get_one_line_and_start_nothing():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "views" / "distill.py"), default_timeout=60)
    at.query_params["dm.lr_img"] = "nan"  # a widget without bounds: its message once raised a TypeError
    at.query_params["ipc"] = "1e308"  # whole, but beyond what a widget holds: was dropped without a word
    at.query_params["dm.batch_real"] = "1000000000"  # within the widget, beyond the option's limit
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    warnings = " ".join(w.value for w in at.warning)
    assert "dm.lr_img='nan' is not a number" in warnings and "ipc='1e308' is outside the allowed range" in warnings
    assert any("batch_real must be <= 1e+06" in e.value for e in at.error)
    assert [b.disabled for b in at.button if b.key == "start"] == [True]
