"""A user's own data: an ``.npz`` of four arrays or a zip of one folder of images per class, checked
from headers and within the ``MAX_*`` bounds before anything is read or decoded (archive bombs,
oversized or undecodable images, labels that do not fit).
"""
from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from distill_core.data.datasets import Data, DataError, from_pixels

MAX_SIDE = 128
# bounds on what a user's file may make this process hold, checked from headers before reading
MAX_VALUES = 250_000_000  # pixel values of one array (1 GB as float32): a 200 MB uint8 .npz fits
MAX_NPZ_BYTES = 2**30  # declared bytes of an .npz's four arrays together (what reading them costs)
MAX_RATIO = 200  # an archive member that inflates more than this many times its stored size is a bomb...
RATIO_FROM_BYTES = 16 * 2**20  # ...once it declares this much (small members of zeros compress well)
MAX_CLASSES = 1000
MAX_ZIP_ENTRIES = 200_000
MAX_ZIP_BYTES = 2 * 2**30  # declared uncompressed bytes of the images in a zip
MAX_IMAGE_BYTES = 80 * 2**20  # one image file in a zip (an uncompressed 4096 x 4096 RGBA is 64 MB)
MAX_IMAGE_SIDE = 4096  # an image's declared side in a zip, before decoding (it is resized to <= MAX_SIDE)
MAX_ZIP_PIXELS = 400_000_000  # declared pixels of all a zip's images: what decoding them costs in time
MAX_BAD_IMAGES = 10  # undecodable files after which a zip is refused without trying the rest
MAX_MAGNITUDE = 1e4  # float pixels beyond this are not an image's values


def names_some(items: list, most: int = 5) -> str:
    """A list for a message: at most ``most`` items, then how many more."""
    shown = ", ".join(str(i) for i in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def check_ratio(info: zipfile.ZipInfo, filename: str) -> None:
    """Refuse a member whose declared size is absurd for its stored size (a decompression bomb), before
    it is inflated: images and arrays of real data do not compress ``MAX_RATIO`` times."""
    if info.file_size > RATIO_FROM_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise DataError(
            f"{info.filename} in {filename} inflates from {info.compress_size:,} to {info.file_size:,} bytes "
            f"(more than {MAX_RATIO} times: a decompression bomb?); save the data uncompressed or with real content"
        )


def npz_headers(zf: zipfile.ZipFile, names: list[str], filename: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each array ``names`` of an .npz, read from the .npy headers: nothing large is
    read or decompressed; arrays too large or not numeric, members that inflate absurdly and labels
    that do not match their images are refused here."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    total = 0
    for name in names:
        with zf.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        if dtype.hasobject:
            raise DataError(f"{filename} holds pickled objects in {name}, which are not loaded for safety; save plain numeric arrays")
        values = int(np.prod(shape, dtype=np.float64)) if shape else 1
        if values > MAX_VALUES:
            raise DataError(
                f"{name} in {filename} declares {values:,} values (shape {shape}); at most {MAX_VALUES:,} are loaded here"
            )
        check_ratio(zf.getinfo(f"{name}.npy"), filename)  # a size it may hold, stored absurdly small
        total += values * dtype.itemsize
        if total > MAX_NPZ_BYTES:
            raise DataError(
                f"the arrays of {filename} declare more than {MAX_NPZ_BYTES / 2**30:.0f} GB (MAX_NPZ_BYTES) by {name} "
                f"({dtype}, shape {shape}); save images as uint8 or float32 and labels as small integers"
            )
        out[name] = (tuple(shape), dtype)
    for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
        if x in out and y in out and out[x][0][:1] and int(np.prod(out[y][0])) != out[x][0][0]:
            raise DataError(f"{y} in {filename} declares shape {out[y][0]} for {out[x][0][0]:,} images; give one label per image")
    return out


CHUNK_BYTES = 16 * 2**20  # source pixels converted at a time: the only temporary beside the images kept


def image_layout(shape: tuple[int, ...], dtype: np.dtype, what: str) -> tuple[tuple[int, int, int, int], str]:
    """((N, C, H, W), source layout "nhw", "nhwc" or "nchw") of images given as N x H x W, N x H x W x C or
    N x C x H x W, uint8 or float: decided from the shape and dtype alone, before any pixel is read."""
    if dtype == np.dtype(object):
        raise DataError(f"{what} holds Python objects; save plain numeric arrays (np.savez without objects)")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{what} has dtype {dtype}; images must be uint8 or float")
    if len(shape) == 3:
        layout, nchw = "nhw", (shape[0], 1, shape[1], shape[2])
    elif len(shape) == 4:
        if shape[1] in (1, 3) and shape[3] not in (1, 3):
            layout, nchw = "nchw", tuple(shape)
        elif shape[3] in (1, 3):
            layout, nchw = "nhwc", (shape[0], shape[3], shape[1], shape[2])
        else:
            raise DataError(f"{what} has shape {tuple(shape)}: cannot tell the channel axis; use 1 or 3 channels")
    else:
        raise DataError(f"{what} has shape {tuple(shape)}; images must be N x H x W, N x H x W x C or N x C x H x W")
    if nchw[0] == 0:
        raise DataError(f"{what} is empty")
    if min(nchw[2:]) < 4 or max(nchw[2:]) > MAX_SIDE:
        raise DataError(f"{what} images are {nchw[2]}x{nchw[3]}; sides must be between 4 and {MAX_SIDE} pixels")
    return nchw, layout


def rows_per_chunk(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return max(1, CHUNK_BYTES // max(1, int(np.prod(shape[1:], dtype=np.float64)) * dtype.itemsize))


def convert_images(chunks, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    """(N, C, H, W) pixels from ``chunks``, consecutive slices of images in the source ``shape`` and
    ``dtype``, each written straight into the one array kept: integers checked to lie in 0..255 and kept
    as uint8 bytes (``Data`` reads them normalised), floats checked finite and kept as float32 in
    [0, 1], rescaled when they lie beyond it."""
    nchw, layout = image_layout(shape, dtype, what)
    integer = np.issubdtype(dtype, np.integer)
    out = np.empty(nchw, dtype=np.uint8 if integer else np.float32)
    check_range = integer and (np.iinfo(dtype).min < 0 or np.iinfo(dtype).max > 255)
    lo, hi = np.inf, -np.inf
    start = 0
    for chunk in chunks:
        if layout == "nhw":
            chunk = chunk[:, None]
        elif layout == "nhwc":
            chunk = chunk.transpose(0, 3, 1, 2)
        if check_range and (chunk.min() < 0 or chunk.max() > 255):
            raise DataError(f"{what} integer pixels must lie in 0..255")
        if not integer:
            if not np.isfinite(chunk).all():
                raise DataError(f"{what} contains NaN or infinite values")
            lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
        end = start + len(chunk)
        out[start:end] = chunk  # the conversion to uint8 or float32, into place
        start = end
    if start != nchw[0]:
        raise DataError(f"{what} holds {start:,} of the {nchw[0]:,} images it declares (a truncated file?)")
    if not integer:
        if max(abs(lo), abs(hi)) > MAX_MAGNITUDE:
            raise DataError(f"{what} holds pixel values from {lo:.3g} to {hi:.3g}; give pixels in [0, 1] (float) or 0..255 (uint8)")
        if lo < 0 or hi > 1:  # floats in another range: rescale to [0, 1] for display and init
            out -= lo
            out /= max(hi - lo, 1e-12)
    return out


def to_nchw(x: np.ndarray, what: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Images as N x H x W, N x H x W x C or N x C x H x W (uint8 or float) -> (N, C, H, W) as
    ``convert_images`` keeps them (uint8, or float32 in [0, 1]), converted a slice at a time into the one
    array returned; ``rows`` (a boolean mask or indices): only
    those images, in order, without a copy of them first."""
    image_layout(x.shape, x.dtype, what)  # refuse a wrong shape or dtype before anything else
    per = rows_per_chunk(x.shape, x.dtype)
    if rows is None:
        return convert_images((x[i : i + per] for i in range(0, len(x), per)), x.shape, x.dtype, what)
    rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
    chunks = (x[rows[i : i + per]] for i in range(0, len(rows), per))
    return convert_images(chunks, (len(rows), *x.shape[1:]), x.dtype, what)


def member_chunks(zf: zipfile.ZipFile, name: str, filename: str):
    """Slices of a few images of the array ``name`` of an .npz, read from its member as needed: the
    array is never held whole in its own dtype (a Fortran-ordered one, which numpy.savez writes only
    for transposed arrays, is read whole)."""
    with zf.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            x = np.frombuffer(f.read(), dtype=dtype)[: int(np.prod(shape))].reshape(shape[::-1]).T
            per = rows_per_chunk(shape, dtype)
            yield from (x[i : i + per] for i in range(0, len(x), per))
            return
        per = rows_per_chunk(shape, dtype)
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for i in range(0, shape[0], per):
            k = min(per, shape[0] - i)
            raw = f.read(k * row)
            if len(raw) < k * row:
                raise DataError(f"{name} in {filename} ends after {i + len(raw) // max(row, 1):,} of its {shape[0]:,} images (a truncated file?)")
            yield np.frombuffer(raw, dtype=dtype).reshape((k, *shape[1:]))


def check_labels(y: np.ndarray, n: int, what: str, num_classes: int | None = None) -> np.ndarray:
    if y.dtype == object or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{what} must be integer class indices, found dtype {y.dtype}")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{what} has shape {y.shape}; expected ({n},), one label per image")
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError(f"{what} must be whole numbers (class indices 0..C-1)")
    y = y.astype(np.int64)
    if y.size and y.max() >= MAX_CLASSES:
        raise DataError(f"{what} names class {y.max()}; at most {MAX_CLASSES} classes (labels 0..{MAX_CLASSES - 1}) are supported")
    top = num_classes if num_classes is not None else None
    if y.min() < 0 or (top is not None and y.max() >= top):
        raise DataError(f"{what} out of range: found {y.min()}..{y.max()}, labels must be 0..{(top or y.max() + 1) - 1}")
    return y


def load_npz(path: Path) -> Data:
    """A user's .npz: headers checked first, labels read, images decoded a slice at a time straight into
    the arrays ``Data`` keeps (uint8 bytes as they are, floats as float32 normalised in place): the
    data's kept size plus a slice."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path.name} is not a readable .npz (not a zip archive); save it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as f:
            needed = ["x_train", "y_train", "x_test", "y_test"]
            missing = [k for k in needed if k not in f.files]
            if missing:
                raise DataError(
                    f"{path.name} lacks {', '.join(missing)}; an .npz must hold x_train, y_train, x_test, y_test"
                )
            headers = npz_headers(f.zip, needed, path.name)
            (ntr, _), (nte, _) = (image_layout(*headers[k], k) for k in ("x_train", "x_test"))
            if ntr[1:] != nte[1:]:
                raise DataError(f"x_train images are {ntr[1:]} but x_test images are {nte[1:]}; they must match")
            ytr = check_labels(f["y_train"], ntr[0], "y_train")
            num_classes = int(ytr.max()) + 1
            yte = check_labels(f["y_test"], nte[0], "y_test", num_classes)
            xtr = convert_images(member_chunks(f.zip, "x_train", path.name), *headers["x_train"], "x_train")
            xte = convert_images(member_chunks(f.zip, "x_test", path.name), *headers["x_test"], "x_test")
    except DataError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise DataError(f"{path.name} holds pickled objects, which are not loaded for safety; save plain numeric arrays") from None
        raise DataError(f"{path.name} is not a readable .npz ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path.name} is not a readable .npz ({e})") from None
    return user_data(path.stem, xtr, ytr, xte, yte, tuple(str(i) for i in range(num_classes)))


def user_data(name, xtr, ytr, xte, yte, class_names) -> Data:
    counts = np.bincount(ytr, minlength=len(class_names))
    if len(class_names) < 2:
        raise DataError("a dataset needs at least 2 classes")
    empty = [class_names[i] for i, c in enumerate(counts) if c == 0]
    if empty:
        raise DataError(f"classes without training images: {names_some(empty)}; every class 0..C-1 needs images")
    if len(yte) == 0:
        raise DataError("the test split is empty")
    return from_pixels(name, xtr, ytr, xte, yte, class_names, own=True)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def open_image(raw: bytes, member: str) -> Image.Image:
    """An image of a zip opened lazily: its header read, its declared size checked, nothing decoded."""
    try:
        im = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:  # Pillow's own guard, met while reading the header
        raise DataError(
            f"{member} declares more than {Image.MAX_IMAGE_PIXELS:,} pixels (a pixel bomb?); images may be at most {MAX_IMAGE_SIDE} on a side"
        ) from None
    if max(im.size) > MAX_IMAGE_SIDE:
        im.close()
        raise DataError(f"{member} declares {im.size[0]}x{im.size[1]} pixels; images may be at most {MAX_IMAGE_SIDE} on a side")
    return im


def decode_image(opened: Image.Image) -> Image.Image:
    """Decode an opened image to 8-bit L or RGB, reduced to at most ``MAX_SIDE`` on a side (what is kept
    of each image stays small); 16-bit greyscale scaled to 8 bits (a plain conversion would clip it to
    white)."""
    with opened as im:
        if im.mode.startswith("I"):  # 16- or 32-bit integer greyscale
            a = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
            out = Image.fromarray((a.clip(0, top) * (255.0 / top)).round().astype(np.uint8), mode="L")
        else:
            out = im.convert("RGB") if im.mode not in ("L", "1") else im.convert("L")
    if max(out.size) > MAX_SIDE:
        out.thumbnail((MAX_SIDE, MAX_SIDE))
    return out


def decode_images(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], filename: str) -> tuple[list[Image.Image], list[tuple[int, int]], list[str]]:
    """(decoded images, their declared sizes, names of undecodable files) of a zip's image entries. Each
    header is checked before its image is decoded, the declared pixels of all images are capped, and
    after ``MAX_BAD_IMAGES`` undecodable files the rest are not tried (a zip of junk fails fast)."""
    images, sizes, bad = [], [], []
    pixels = kept = 0
    for info in infos:
        try:
            opened = open_image(zf.read(info), info.filename)
        except DataError:
            raise
        except Exception:  # noqa: BLE001 - any unreadable file is reported by name
            bad.append(info.filename)
            if len(bad) >= MAX_BAD_IMAGES:
                break
            continue
        pixels += opened.size[0] * opened.size[1]
        if pixels > MAX_ZIP_PIXELS:
            opened.close()
            raise DataError(
                f"the images of {filename} declare more than {MAX_ZIP_PIXELS:,} pixels in all (MAX_ZIP_PIXELS) by "
                f"{info.filename}; give images of at most {MAX_SIDE}x{MAX_SIDE} pixels"
            )
        try:
            im = decode_image(opened)
        except (OSError, ValueError, SyntaxError):  # a header that reads and data that does not
            bad.append(info.filename)
            if len(bad) >= MAX_BAD_IMAGES:
                break
            continue
        kept += im.size[0] * im.size[1] * 3  # as RGB, the most a stacked image may take
        if kept > MAX_VALUES:
            raise DataError(
                f"the images of {filename} hold more than {MAX_VALUES:,} pixel values (MAX_VALUES) by {info.filename}; "
                "give fewer or smaller images"
            )
        sizes.append(opened.size)
        images.append(im)
    return images, sizes, bad


def split_per_class(y: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split: per class, round(test_fraction n) images (at least 1) to the test set."""
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: max(1, round(test_fraction * len(idx)))]] = True
    return ~test, test


def load_zip(path: Path, test_fraction: float = 0.2) -> Data:
    """A zip of class folders (``cat/1.png``), optionally under ``train/`` and ``test/``. Entry counts,
    declared sizes and image dimensions are checked before anything is decompressed or decoded."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path.name} is not a readable zip ({e})") from None
    entries: list[tuple[str | None, str, zipfile.ZipInfo]] = []  # (split, class, member)
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise DataError(f"{path.name} has {len(infos):,} entries; at most {MAX_ZIP_ENTRIES:,} are read")
        for info in infos:
            member = info.filename
            parts = [p for p in member.split("/") if p and not p.startswith(".") and p != "__MACOSX"]
            if len(parts) < 2 or Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES or member.startswith("__MACOSX"):
                continue
            split = parts[-3].lower() if len(parts) >= 3 and parts[-3].lower() in ("train", "test") else None
            entries.append((split, parts[-2], info))
        if not entries:
            raise DataError(f"{path.name} holds no images in class folders; lay it out as <class>/<image>.png")
        declared = sum(info.file_size for _, _, info in entries)
        if declared > MAX_ZIP_BYTES:
            raise DataError(f"{path.name} declares {declared / 2**30:.1f} GB of images; at most {MAX_ZIP_BYTES / 2**30:.0f} GB are read")
        for _, _, info in entries:
            if info.file_size > MAX_IMAGE_BYTES:
                raise DataError(f"{info.filename} declares {info.file_size:,} bytes; an image file may be at most {MAX_IMAGE_BYTES:,}")
            check_ratio(info, path.name)
        classes = tuple(sorted({c for _, c, _ in entries}))
        if len(classes) > MAX_CLASSES:
            raise DataError(f"{path.name} has {len(classes):,} class folders; at most {MAX_CLASSES} are supported")
        images, sizes, bad = decode_images(zf, [info for _, _, info in entries], path.name)
    if bad:
        more = "" if len(bad) < MAX_BAD_IMAGES else f" (stopped after {MAX_BAD_IMAGES} of {len(entries):,} image entries)"
        raise DataError(f"{len(bad)} files are not readable images{more}: {names_some(bad, 3)}")
    size = max(set(sizes), key=sizes.count)
    if min(size) < 4 or max(size) > MAX_SIDE:
        raise DataError(f"images are {size[0]}x{size[1]}; sides must be between 4 and {MAX_SIDE} pixels")
    rgb = any(im.mode == "RGB" for im in images)
    arr = np.empty((len(images), size[1], size[0], 3 if rgb else 1), dtype=np.uint8)  # N x H x W x C
    for i, im in enumerate(images):
        arr[i] = np.asarray((im.convert("RGB") if rgb else im).resize(size), dtype=np.uint8).reshape(arr.shape[1:])
        images[i] = None  # each decoded image let go once copied: the pixels are held once as uint8
    del images
    y = np.array([classes.index(c) for _, c, _ in entries])
    split = np.array([s for s, _, _ in entries])
    if (split == "train").any() and (split == "test").any():
        tr, te = split == "train", split == "test"
    else:
        few = [classes[c] for c in range(len(classes)) if (y == c).sum() < 2]
        if few:
            raise DataError(
                f"classes with fewer than 2 images: {names_some(few)}; every class needs at least 2 (one to train "
                "on, one to test), or give train/ and test/ folders"
            )
        tr, te = split_per_class(y, test_fraction)
    # each split taken from its rows of the uint8 images, a slice at a time, into the two uint8 arrays
    # kept: the decoded pixels are held twice at most, as bytes
    return user_data(path.stem, to_nchw(arr, "images", tr), y[tr], to_nchw(arr, "images", te), y[te], classes)
