import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from distill_core.data import builtin, datasets, load
from distill_core.data.datasets import DataError, fingerprint, from_pixels


def test_digits_split_is_fixed_and_stratified():
    d = load("digits")
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == torch.float32
    assert len(d.y_train) + len(d.y_test) == 1797
    assert d.num_classes == 10
    train, test = torch.bincount(d.y_train), torch.bincount(d.y_test)
    assert ((test / (train + test) - 0.2).abs() < 0.01).all()  # stratified
    assert abs(float(d.x_train[:].mean())) < 1e-4  # normalised with train statistics
    again = builtin.load_digits()
    assert torch.equal(again.y_test, d.y_test)


def test_denormalise_returns_pixels():
    d = load("digits")
    px = d.denormalise(d.x_train[:5])
    assert px.min() >= 0 and px.max() <= 1
    assert px.max() > 0.9


def test_unknown_dataset_message():
    with pytest.raises(DataError, match="unknown dataset 'nope'; known: digits"):
        load("nope")


def test_missing_file_message(tmp_path):
    with pytest.raises(DataError, match="no file"):
        load(str(tmp_path / "absent.npz"))


def test_fashion_missing_names_the_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin, "FASHION_DEBIAN", tmp_path / "none")
    monkeypatch.setattr(builtin, "DATA_ROOT", tmp_path)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        builtin.load_fashion()


def test_torchvision_offline_message(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin, "DATA_ROOT", tmp_path)
    monkeypatch.setattr(builtin, "online", lambda *a, **k: False)
    with pytest.raises(DataError, match="no internet connection.*cifar-10"):
        builtin.load_torchvision("cifar10")


def test_idx_roundtrip(tmp_path):
    import gzip

    imgs = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    raw = bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big") for s in imgs.shape) + imgs.tobytes()
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(raw))
    assert np.array_equal(builtin.read_idx(p), imgs)
    p.write_bytes(gzip.compress(raw[:-3]))
    with pytest.raises(DataError, match="truncated"):
        builtin.read_idx(p)


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def good_arrays(layout="nhw"):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 10, 10), dtype=np.uint8)
    y = np.arange(40) % 4
    if layout == "nhwc":
        x = np.repeat(x[..., None], 3, axis=3)
    if layout == "nchw":
        x = np.repeat(x[:, None], 3, axis=1).astype(np.float32) / 255
    return {"x_train": x, "y_train": y, "x_test": x[:8], "y_test": y[:8]}


@pytest.mark.parametrize("layout,channels", [("nhw", 1), ("nhwc", 3), ("nchw", 3)])
def test_npz_layouts(tmp_path, layout, channels):
    d = load(save_npz(tmp_path / f"{layout}.npz", **good_arrays(layout)))
    assert d.x_train.shape == (40, channels, 10, 10)
    assert d.num_classes == 4


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: a.pop("y_test"), "lacks y_test"),
        (lambda a: a.update(x_train=a["x_train"][:, :, :, None, None]), "shape"),
        (lambda a: a.update(y_test=a["y_test"] + 10), "out of range"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), "one label per image"),
        (lambda a: a.update(x_test=a["x_test"][:, :5, :5]), "must match"),
        (lambda a: a.update(y_train=np.where(a["y_train"] == 1, 2, a["y_train"])), "classes without training images"),
    ],
)
def test_npz_rejections(tmp_path, change, message):
    arrays = good_arrays()
    change(arrays)
    with pytest.raises(DataError, match=message):
        load(save_npz(tmp_path / "bad.npz", **arrays))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    arrays = good_arrays()
    arrays["x_train"] = np.array([object()] * 3, dtype=object)
    p = tmp_path / "pickled.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match="pickled"):
        load(str(p))


def test_not_an_npz(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="not a readable .npz"):
        load(str(p))


def make_zip(path, classes=("cat", "dog"), per_class=5, size=(12, 12), extra=None):
    with zipfile.ZipFile(path, "w") as zf:
        for c in classes:
            for i in range(per_class):
                buf = io.BytesIO()
                Image.fromarray(np.full((*size, 3), 40 * i, dtype=np.uint8)).save(buf, format="PNG")
                zf.writestr(f"data/{c}/{i}.png", buf.getvalue())
        for name, content in (extra or {}).items():
            zf.writestr(name, content)
    return str(path)


def test_zip_of_class_folders(tmp_path):
    d = load(make_zip(tmp_path / "pets.zip"))
    assert d.class_names == ("cat", "dog")
    assert d.x_train.shape[1:] == (3, 12, 12)
    assert len(d.y_train) + len(d.y_test) == 10


def test_zip_with_a_broken_image(tmp_path):
    with pytest.raises(DataError, match="not readable images"):
        load(make_zip(tmp_path / "b.zip", extra={"data/cat/broken.png": b"nope"}))


def test_zip_without_class_folders(tmp_path):
    p = tmp_path / "flat.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(DataError, match="class folders"):
        load(str(p))


def test_byte_images_read_as_the_float32_normalisation_of_the_whole_set_gave():
    """Issue 24: pixels kept as uint8 and normalised on each read give, bit for bit, what normalising
    a float32 copy of the pixels once gave with the same statistics (every byte value, one image or
    many, on any index); the mean is the exact one rounded to float32 (on digits and Fashion-MNIST
    torch's float32 reduction gives that same number), and the fingerprint (the expert cache's key)
    is that of the normalised float32 copy."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 3, 6, 5), dtype=np.uint8)
    x[1].flat[:256] = np.arange(256, dtype=np.uint8)  # every byte value
    y = np.arange(300) % 3
    as_bytes = from_pixels("b", x, y, x[:40], y[:40], ("a", "b", "c"))
    assert as_bytes.x_train.stored.dtype == torch.uint8 and as_bytes.x_train.nbytes == x.nbytes
    exact = x.astype(np.int64).sum(axis=(0, 2, 3)) / (300 * 6 * 5 * 255)
    assert as_bytes.mean == tuple(float(np.float32(m)) for m in exact)
    mean, std = torch.tensor(as_bytes.mean).view(1, -1, 1, 1), torch.tensor(as_bytes.std).view(1, -1, 1, 1)
    every = (torch.from_numpy(x / np.float32(255)) - mean) / std  # the float32 copy, normalised once
    idx = torch.tensor([5, 0, 299, 5])
    for index in (slice(None), slice(10, 20), idx, 7):
        assert torch.equal(as_bytes.x_train[index], every[index])
    assert torch.equal(as_bytes.x_test[:], every[:40])
    as_floats = datasets.Data("b", every, as_bytes.y_train, every[:40], as_bytes.y_test, ("a", "b", "c"), as_bytes.mean, as_bytes.std)
    assert as_floats.x_train.stored.dtype == torch.float32
    assert fingerprint(as_bytes) == fingerprint(as_floats)
    assert datasets.test_fingerprint(as_bytes) == datasets.test_fingerprint(as_floats)
    assert torch.equal(as_bytes.to("cpu").x_train[idx], every[idx])


def test_digits_keep_their_bytes():
    d = load("digits")
    assert d.x_train.stored.dtype == torch.uint8 and d.x_train.top == 16
    assert d.x_train[:].dtype == torch.float32
