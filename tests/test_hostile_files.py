"""Hostile and careless files (issue: bounded input): each ends in one short DataError, decided from
headers where the file lies about its size, before anything large is read or decoded."""
from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from distill_core.data import uploads
from distill_core.data.datasets import DataError
from distill_core.data.uploads import load_npz, load_zip


def npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return path


def good_arrays(n: int = 12, classes: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 255, (n, 8, 8), dtype=np.uint8), "y_train": np.arange(n) % classes,
        "x_test": rng.integers(0, 255, (classes, 8, 8), dtype=np.uint8), "y_test": np.arange(classes),
    }


def npy_header(shape: tuple, dtype: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})  # magic included
    return buf.getvalue()


def short_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def test_an_array_whose_header_declares_terabytes_is_refused_unread(tmp_path):
    path = tmp_path / "huge.npz"
    arrays = good_arrays()
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in arrays.items():
            buf = io.BytesIO()
            np.save(buf, v)
            zf.writestr(f"{k}.npy", npy_header((1_600_000, 1000, 1000)) if k == "x_train" else buf.getvalue())
    with pytest.raises(DataError) as e:
        load_npz(path)
    assert "declares 1,600,000,000,000 values" in short_error(e)


def test_a_deflate_bomb_inside_an_npz_is_refused_before_decompressing(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_VALUES", 10_000_000)  # the same check at a size a test can write quickly
    path = tmp_path / "bomb.npz"
    arrays = good_arrays()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, v in arrays.items():
            if k == "x_train":
                with zf.open("x_train.npy", "w", force_zip64=True) as f:
                    f.write(npy_header((20_000, 32, 32)))
                    zeros = bytes(2**20)
                    for _ in range(20_000 * 32 * 32 // 2**20):
                        f.write(zeros)
                    f.write(bytes(20_000 * 32 * 32 % 2**20))
            else:
                buf = io.BytesIO()
                np.save(buf, v)
                zf.writestr(f"{k}.npy", buf.getvalue())
    assert path.stat().st_size < 200_000  # 20 MB of zeros in a few tens of kB
    with pytest.raises(DataError) as e:
        load_npz(path)
    assert "declares 20,480,000 values" in short_error(e)


@pytest.mark.parametrize("top", [2_000_000_000, 10_000_000, 1000])
def test_labels_naming_absurdly_many_classes_get_a_short_message(tmp_path, top):
    arrays = good_arrays()
    arrays["y_train"] = arrays["y_train"].copy()
    arrays["y_train"][0] = top
    with pytest.raises(DataError) as e:
        load_npz(npz(tmp_path / "classes.npz", **arrays))
    assert f"at most {uploads.MAX_CLASSES} classes" in short_error(e)


def test_many_empty_classes_are_named_a_few_at_a_time(tmp_path):
    arrays = good_arrays()
    arrays["y_train"] = np.where(np.arange(12) == 0, 900, arrays["y_train"])  # classes 3..899 have no images
    with pytest.raises(DataError) as e:
        load_npz(npz(tmp_path / "empty.npz", **arrays))
    assert "and 892 more" in short_error(e)


@pytest.mark.parametrize("value", [1e30, -1e30, 3.0e38])
def test_extreme_but_finite_pixels_are_refused(tmp_path, value):
    arrays = good_arrays()
    x = arrays["x_train"].astype(np.float32) / 255
    x[0, 0, 0] = value
    arrays["x_train"] = x
    with pytest.raises(DataError) as e:
        load_npz(npz(tmp_path / "extreme.npz", **arrays))
    assert "give pixels in [0, 1]" in short_error(e)


def test_float_pixels_in_another_range_are_rescaled(tmp_path):
    arrays = good_arrays()
    arrays["x_train"] = arrays["x_train"].astype(np.float32) * 4 - 500  # -500 .. 520
    d = load_npz(npz(tmp_path / "range.npz", **arrays))
    px = d.denormalise(d.x_train[:])
    assert float(px.min()) == pytest.approx(0, abs=1e-5) and float(px.max()) == pytest.approx(1, abs=1e-5)


# ---- zips --------------------------------------------------------------------------------------


def png(a: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (a pixel bomb), with one empty data chunk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return bytes([0x89]) + b"PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(
        b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def make_zip(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in files.items():
            zf.writestr(name, raw)
    return path


def digit_pngs(classes: list[str], per_class: int) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {f"{c}/{i}.png": png(rng.integers(0, 255, (8, 8), dtype=np.uint8)) for c in classes for i in range(per_class)}


def test_a_pixel_bomb_is_refused_before_decoding(tmp_path):
    files = digit_pngs(["a", "b"], 3)
    files["a/bomb.png"] = png_header_only(100_000, 100_000)
    with pytest.raises(DataError) as e:
        load_zip(make_zip(tmp_path / "bomb.zip", files))
    msg = short_error(e)
    assert "a/bomb.png declares" in msg and "pixels" in msg


def test_too_many_entries_and_too_many_declared_bytes(tmp_path, monkeypatch):
    files = digit_pngs(["a", "b"], 3)
    monkeypatch.setattr(uploads, "MAX_ZIP_ENTRIES", 5)
    with pytest.raises(DataError) as e:
        load_zip(make_zip(tmp_path / "many.zip", files))
    assert "has 6 entries; at most 5" in short_error(e)
    monkeypatch.setattr(uploads, "MAX_ZIP_ENTRIES", 100)
    monkeypatch.setattr(uploads, "MAX_ZIP_BYTES", 100)
    with pytest.raises(DataError) as e:
        load_zip(make_zip(tmp_path / "big.zip", files))
    assert "declares" in short_error(e) and "GB of images" in str(e.value)


def test_a_class_with_one_image_gets_a_message_not_a_library_traceback(tmp_path):
    files = digit_pngs(["a", "b", "c"], 3)
    files.update(digit_pngs(["lonely"], 1))
    with pytest.raises(DataError) as e:
        load_zip(make_zip(tmp_path / "few.zip", files))
    assert "classes with fewer than 2 images: lonely" in short_error(e)


def test_few_images_per_class_still_split(tmp_path):
    d = load_zip(make_zip(tmp_path / "small.zip", digit_pngs([str(i) for i in range(8)], 3)))
    assert d.x_test.shape[0] == 8 and d.x_train.shape[0] == 16  # one test image per class


def test_class_folders_of_any_unicode_name(tmp_path):
    d = load_zip(make_zip(tmp_path / "unicode.zip", digit_pngs(["chat", "猫", "Ωμέγα"], 3)))
    assert set(d.class_names) == {"chat", "猫", "Ωμέγα"}


def test_sixteen_bit_pngs_keep_their_contrast(tmp_path):
    rng = np.random.default_rng(0)
    files = {
        f"{c}/{i}.png": png((rng.integers(0, 65535, (8, 8))).astype(np.uint16))
        for c in ("a", "b") for i in range(3)
    }
    d = load_zip(make_zip(tmp_path / "deep.zip", files))
    px = d.denormalise(d.x_train[:])
    assert 0.3 < float(px.mean()) < 0.7 and float(px.std()) > 0.2  # not all white
