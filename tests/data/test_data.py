"""condense.data on tiny data sets written here in their real formats, plus the real MNIST npz."""

import gzip
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import condense.data as data
import condense.data._trees as trees  # _decode_image is looked up there: patch it there
from condense import CondenseError
from condense.data import DataSpec, load_data, parse_data_spec
from conftest import real_data

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


# ------------------------------------------------------------------------------------------ builders


def write_idx(path: Path, arr: np.ndarray, *, magic: int | None = None, gz: bool = False) -> None:
    magic = (0x0800 | arr.ndim) if magic is None else magic
    raw = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def mnist_arrays(n_train=40, n_test=12, seed=0):
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    x_train[:, 0, 0] = np.arange(n_train)  # each image says which one it is
    y_train = (np.arange(n_train) % 10).astype(np.uint8)
    y_test = (np.arange(n_test) % 10).astype(np.uint8)
    return x_train, y_train, x_test, y_test


def write_mnist_idx(d: Path, *, gz: bool = False, **kw) -> tuple[np.ndarray, ...]:
    d.mkdir(parents=True, exist_ok=True)
    arrs = mnist_arrays(**kw)
    for name, a in zip(
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), arrs
    ):
        write_idx(d / name, a, gz=gz)
    return arrs


def cifar_images(n_per_class: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x 3 x 32 x 32 images and their labels, grouped by class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    x = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    return x, labels


def write_cifar10_pickles(d: Path, train, test, protocol=2) -> None:
    d.mkdir(parents=True)
    x, y = train
    parts = np.array_split(np.arange(len(y)), 5)
    for i, idx in enumerate(parts, start=1):
        batch = {
            b"batch_label": b"training batch",
            b"labels": [int(v) for v in y[idx]],
            b"data": x[idx].reshape(len(idx), 3072),
            b"filenames": [b"x.png"] * len(idx),
        }
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=protocol))
    xt, yt = test
    (d / "test_batch").write_bytes(
        pickle.dumps({b"labels": list(map(int, yt)), b"data": xt.reshape(-1, 3072)}, protocol=protocol)
    )
    (d / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [n.encode() for n in CIFAR10], b"num_vis": 3072}, protocol=protocol)
    )


def write_tree(root: Path, splits: dict, classes, ext=".png") -> None:
    for split, (x, y) in splits.items():
        counters = {}
        for img, label in zip(x, y):
            c = classes[int(label)]
            k = counters.get(c, 0)
            counters[c] = k + 1
            (root / split / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(root / split / c / f"{k:04d}{ext}")


def all_batches(bundle, split, **kw):
    xs, ys = zip(*bundle.loader(split, 7, shuffle=False, augment=False, **kw))
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture(scope="module")
def cifar_sets(tmp_path_factory):
    """The same synthetic CIFAR-10 images as python pickles, a PNG tree and a .tar.gz of that tree."""
    root = tmp_path_factory.mktemp("cifar")
    train, test = cifar_images(3, 10, seed=1), cifar_images(1, 10, seed=2)
    write_cifar10_pickles(root / "pickles" / "cifar-10-batches-py", train, test)
    write_tree(root / "tree", {"train": train, "test": test}, CIFAR10)
    with tarfile.open(root / "tree.tar.gz", "w:gz") as tf:
        tf.add(root / "tree" / "train", arcname="train")
        tf.add(root / "tree" / "test", arcname="test")
    return root, train, test


# ---------------------------------------------------------------------------------------------- specs


def test_parse_data_spec():
    assert parse_data_spec("cifar10:/a/b.tar.gz") == DataSpec("cifar10", Path("/a/b.tar.gz"))
    assert parse_data_spec(" MNIST:x.npz ").kind == "mnist"
    assert str(parse_data_spec("imagefolder:/data/imnet")) == "imagefolder:/data/imnet"
    for bad in ("svhn:/x", "cifar10", "cifar10:", "/some/path"):
        with pytest.raises(CondenseError) as err:
            parse_data_spec(bad)
        text = one_line(err)
        assert repr(bad) in text and "mnist:PATH" in text and "imagefolder:PATH" in text


# ---------------------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    x_train, y_train, x_test, y_test = write_mnist_idx(tmp_path / "mnist", gz=gz)
    b = load_data(f"mnist:{tmp_path / 'mnist'}", cache_dir=tmp_path / "cache")
    assert (b.name, b.num_classes, b.input_size, b.train_size, b.test_size) == ("mnist", 10, (1, 28, 28), 40, 12)
    assert b.classes == tuple("0123456789")
    x, y = all_batches(b, "train")
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (40, 1, 28, 28)
    assert torch.equal(y, torch.from_numpy(y_train.astype(np.int64)))
    raw = x * b.std[0] + b.mean[0]
    assert torch.allclose(raw * 255, torch.from_numpy(x_train[:, None].astype(np.float32)), atol=1e-3)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-4
    xt, yt = all_batches(b, "test")
    assert xt.shape == (12, 1, 28, 28) and torch.equal(yt, torch.from_numpy(y_test.astype(np.int64)))


def test_mnist_npz_and_idx_agree_no_augmentation_and_resize(tmp_path):
    arrs = write_mnist_idx(tmp_path / "raw")
    np.savez(tmp_path / "m.npz", x_train=arrs[0][..., None], y_train=arrs[1], x_test=arrs[2], y_test=arrs[3])
    a = load_data(f"mnist:{tmp_path / 'raw'}", cache_dir=tmp_path / "c")
    b = load_data(f"mnist:{tmp_path / 'm.npz'}", cache_dir=tmp_path / "c")
    assert torch.equal(all_batches(a, "train")[0], all_batches(b, "train")[0])
    x_plain = next(iter(b.loader("train", 8, shuffle=True, augment=False, seed=3)))[0]
    x_aug = next(iter(b.loader("train", 8, shuffle=True, augment=True, seed=3)))[0]
    assert torch.equal(x_plain, x_aug)  # MNIST: no augmentation
    c = load_data(f"mnist:{tmp_path / 'm.npz'}", cache_dir=tmp_path / "c", input_size=(3, 32, 32))
    x, _ = next(iter(c.loader("test", 4, shuffle=False, augment=False)))
    assert x.shape == (4, 3, 32, 32) and c.input_size == (3, 32, 32) and len(c.mean) == 3
    assert torch.equal(x[:, 0], x[:, 2])


def test_mnist_real_npz(tmp_path):
    b = load_data(f"mnist:{real_data('mnist.npz')}", cache_dir=tmp_path)
    assert (b.train_size, b.test_size, b.num_classes, b.input_size) == (60000, 10000, 10, (1, 28, 28))
    assert b.mean[0] == pytest.approx(0.1307, abs=1e-4) and b.std[0] == pytest.approx(0.3081, abs=1e-4)
    ld = b.loader("test", 1000, shuffle=False, augment=False)
    assert len(ld) == 10
    x, y = next(iter(ld))
    assert x.shape == (1000, 1, 28, 28) and set(y.tolist()) == set(range(10))
    assert len(list(tmp_path.glob("*.stats.json"))) == 1


# ---------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_pickles_tree_and_tar_give_the_same_pixels(cifar_sets, tmp_path):
    root, (x_train, y_train), (x_test, y_test) = cifar_sets
    specs = [
        f"cifar10:{root / 'pickles'}",
        f"cifar10:{root / 'pickles' / 'cifar-10-batches-py'}",
        f"cifar10:{root / 'tree'}",
        f"cifar10:{root / 'tree.tar.gz'}",
    ]
    bundles = [load_data(s, cache_dir=tmp_path) for s in specs]
    ref = bundles[0]
    assert ref.classes == CIFAR10 and ref.num_classes == 10 and ref.input_size == (3, 32, 32)
    assert (ref.train_size, ref.test_size) == (30, 10)
    x, y = all_batches(ref, "train")
    # raw pixels come back exactly; the pickles are in class order here, like the tree
    assert torch.allclose(
        x * torch.tensor(ref.std).view(1, 3, 1, 1) + torch.tensor(ref.mean).view(1, 3, 1, 1),
        torch.from_numpy(x_train).float() / 255,
        atol=1e-5,
    )
    assert torch.equal(y, torch.from_numpy(y_train))
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    for b in bundles[1:]:
        assert (b.classes, b.mean, b.std, b.train_size, b.test_size) == (
            ref.classes,
            ref.mean,
            ref.std,
            ref.train_size,
            ref.test_size,
        )
        for split in ("train", "test"):
            xb, yb = all_batches(b, split)
            xr, yr = all_batches(ref, split)
            assert torch.equal(xb, xr) and torch.equal(yb, yr)


def test_cifar100_pickles(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    x, fine = cifar_images(1, 100, seed=3)
    for name, idx in (("train", slice(0, 100)), ("test", slice(0, 50))):
        batch = {
            b"data": x[idx].reshape(-1, 3072),
            b"fine_labels": fine[idx].tolist(),
            b"coarse_labels": (fine[idx] // 5).tolist(),
        }
        (d / name).write_bytes(pickle.dumps(batch))  # default protocol: numpy 2's array pickling
    names = [f"class{i:03d}".encode() for i in range(100)]
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": names, b"coarse_label_names": []}))
    b = load_data(f"cifar100:{tmp_path}", cache_dir=tmp_path / "c")
    assert (b.num_classes, b.train_size, b.test_size, b.classes[7]) == (100, 100, 50, "class007")
    xs, ys = all_batches(b, "test")
    assert xs.shape == (50, 3, 32, 32) and torch.equal(ys, torch.arange(50))


def test_tree_cache_written_once_and_reused(cifar_sets, tmp_path, monkeypatch):
    root = cifar_sets[0]
    calls = []
    real_decode = trees._decode_image
    monkeypatch.setattr(trees, "_decode_image", lambda b, n: calls.append(n) or real_decode(b, n))
    first = load_data(f"cifar10:{root / 'tree.tar.gz'}", cache_dir=tmp_path)
    assert len(calls) == 40
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("cifar10-tree.tar.gz-") and files[0].endswith(".npz")

    def boom(b, n):
        raise AssertionError("decoded again")

    monkeypatch.setattr(trees, "_decode_image", boom)
    second = load_data(f"cifar10:{root / 'tree.tar.gz'}", cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert second.mean == first.mean and torch.equal(all_batches(first, "test")[0], all_batches(second, "test")[0])
    with pytest.raises(AssertionError, match="decoded again"):  # another source (new key) does decode
        load_data(f"cifar10:{root / 'tree'}", cache_dir=tmp_path)


def test_interrupted_decode_leaves_no_cache(cifar_sets, tmp_path, monkeypatch):
    root = cifar_sets[0]
    real_decode, n = trees._decode_image, []

    def flaky(b, name):
        n.append(name)
        if len(n) == 25:
            raise KeyboardInterrupt
        return real_decode(b, name)

    monkeypatch.setattr(trees, "_decode_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        load_data(f"cifar10:{root / 'tree.tar.gz'}", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_crop_flip_augmentation(cifar_sets, tmp_path):
    b = load_data(f"cifar10:{cifar_sets[0] / 'pickles'}", cache_dir=tmp_path)
    kw = dict(shuffle=True, seed=5, epoch=2)
    plain = torch.cat([x for x, _ in b.loader("train", 8, augment=False, **kw)])
    aug1 = torch.cat([x for x, _ in b.loader("train", 8, augment=True, **kw)])
    aug2 = torch.cat([x for x, _ in b.loader("train", 8, augment=True, **kw)])
    other = torch.cat([x for x, _ in b.loader("train", 8, augment=True, shuffle=True, seed=5, epoch=3)])
    assert aug1.shape == plain.shape == (30, 3, 32, 32)
    assert torch.equal(aug1, aug2) and not torch.equal(aug1, plain) and not torch.equal(aug1, other)
    # each augmented image is a shifted (maybe mirrored) window of the zero-padded original
    pad_value = (-torch.tensor(b.mean) / torch.tensor(b.std)).view(3, 1, 1)
    kinds = set()
    for a, p in zip(aug1, plain):
        padded = torch.nn.functional.pad(p - pad_value, (4, 4, 4, 4)) + pad_value
        windows = [(i, j, padded[:, i : i + 32, j : j + 32]) for i in range(9) for j in range(9)]
        match = [
            (i, j, f)
            for i, j, w in windows
            for f in (False, True)
            if torch.allclose(a, w.flip(-1) if f else w, atol=1e-5)
        ]
        assert match, "an augmented image is not a crop of the padded original"
        kinds.update((i != 4 or j != 4, f) for i, j, f in match)
    assert {(True, False), (True, True)} <= kinds  # both shifted and mirrored crops occur
    assert torch.equal(plain, torch.cat([x for x, _ in b.loader("train", 8, augment=False, **kw)]))


def test_shards_lengths_and_resume(tmp_path):
    write_mnist_idx(tmp_path / "m", n_train=40)
    b = load_data(f"mnist:{tmp_path / 'm'}", cache_dir=tmp_path / "c")
    ident = lambda x: ((x[:, 0, 0, 0] * b.std[0] + b.mean[0]) * 255).round().long()  # noqa: E731
    for world, bs in ((4, 3), (3, 5)):  # 40 = 4 x 10; 40 = 3 x 14 - 2 (padded by repetition)
        seen = []
        for rank in range(world):
            ld = b.loader("train", bs, shuffle=True, augment=False, seed=1, epoch=4, rank=rank, world_size=world)
            ids = torch.cat([ident(x) for x, _ in ld])
            assert len(ids) == ld.num_samples == -(-40 // world) and len(ld) == -(-ld.num_samples // bs)
            assert torch.equal(ids, ld.indices())  # the image identities are their positions
            sampler = torch.utils.data.DistributedSampler(range(40), num_replicas=world, rank=rank, seed=1)
            sampler.set_epoch(4)
            assert ids.tolist() == list(sampler)
            seen.append(ids)
        every = torch.cat(seen)
        assert set(every.tolist()) == set(range(40))
        if world == 4:
            assert len(every) == 40  # disjoint
    ld = b.loader("train", 6, shuffle=True, augment=False, drop_last=True)
    assert len(ld) == 6 and all(len(y) == 6 for _, y in ld)
    assert len(b.loader("train", 6, shuffle=True, augment=False)) == 7
    full = [y for _, y in b.loader("train", 6, shuffle=True, augment=False, seed=9, epoch=1)]
    rest = [y for _, y in b.loader("train", 6, shuffle=True, augment=False, seed=9, epoch=1, start_batch=4)]
    assert len(rest) == 3 and all(torch.equal(a, c) for a, c in zip(full[4:], rest))
    assert not torch.equal(
        torch.cat(full), torch.cat([y for _, y in b.loader("train", 6, shuffle=True, augment=False, seed=9, epoch=2)])
    )


def test_limits_keep_a_fixed_subset(tmp_path):
    write_mnist_idx(tmp_path / "m", n_train=40)
    full = load_data(f"mnist:{tmp_path / 'm'}", cache_dir=tmp_path / "c")
    a = load_data(f"mnist:{tmp_path / 'm'}", cache_dir=tmp_path / "c", limit_train=10, limit_test=5)
    b = load_data(f"mnist:{tmp_path / 'm'}", cache_dir=tmp_path / "c", limit_train=10, limit_test=5)
    assert (a.train_size, a.test_size) == (10, 5) and a.mean == full.mean
    ya = all_batches(a, "train")[1]
    assert torch.equal(ya, all_batches(b, "train")[1]) and len(set(ya.tolist())) > 3


def test_imagefolder(tmp_path):
    x, y = cifar_images(2, 3, seed=4)
    write_tree(tmp_path / "imnet", {"train": (x, y), "val": (x[::2], y[::2])}, ("ant", "bee", "cat"), ext=".jpg")
    b = load_data(f"imagefolder:{tmp_path / 'imnet'}", input_size=(3, 24, 24))
    assert (b.name, b.classes, b.train_size, b.test_size, b.input_size) == (
        "imnet",
        ("ant", "bee", "cat"),
        6,
        3,
        (3, 24, 24),
    )
    ld = b.loader("train", 4, shuffle=True, augment=True, seed=1)
    batches = list(ld)
    assert len(ld) == len(batches) == 2
    assert batches[0][0].shape == (4, 3, 24, 24) and batches[0][1].dtype == torch.int64
    xv, yv = next(iter(b.loader("val", 8, shuffle=False, augment=False)))
    assert xv.shape == (3, 3, 24, 24) and yv.tolist() == [0, 1, 2]


# --------------------------------------------------------------------------------------------- errors


def test_errors_are_one_line(tmp_path):
    with pytest.raises(CondenseError, match="does not exist") as err:
        load_data(f"cifar10:{tmp_path / 'nope.tar.gz'}", cache_dir=tmp_path)
    one_line(err)
    (tmp_path / "empty").mkdir()
    for kind, what in (
        ("mnist", "no MNIST idx files"),
        ("cifar10", "neither the CIFAR python batches"),
        ("imagefolder", "expected train/ and val/"),
    ):
        with pytest.raises(CondenseError, match=what) as err:
            load_data(f"{kind}:{tmp_path / 'empty'}", cache_dir=tmp_path)
        one_line(err)


def test_corrupt_idx(tmp_path):
    d = tmp_path / "m"
    write_mnist_idx(d)
    write_idx(d / "train-images-idx3-ubyte", np.zeros((40, 28, 28), np.uint8), magic=0x12345678)
    with pytest.raises(CondenseError, match="bad idx magic number 0x12345678") as err:
        load_data(f"mnist:{d}", cache_dir=tmp_path)
    one_line(err)
    write_idx(d / "train-images-idx3-ubyte", np.zeros((40, 28, 28), np.uint8), magic=0x00000801)
    with pytest.raises(CondenseError, match="is not images"):
        load_data(f"mnist:{d}", cache_dir=tmp_path)
    raw = (d / "t10k-labels-idx1-ubyte").read_bytes()
    write_idx(d / "train-images-idx3-ubyte", np.zeros((40, 28, 28), np.uint8))
    (d / "t10k-labels-idx1-ubyte").write_bytes(raw[:-3])
    with pytest.raises(CondenseError, match="holds 9"):
        load_data(f"mnist:{d}", cache_dir=tmp_path)


def test_corrupt_and_bad_archives(tmp_path, cifar_sets):
    bad = tmp_path / "junk.tar.gz"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(CondenseError, match="not a readable tar archive") as err:
        load_data(f"cifar10:{bad}", cache_dir=tmp_path / "c")
    one_line(err)
    good = (cifar_sets[0] / "tree.tar.gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CondenseError, match="damaged") as err:
        load_data(f"cifar10:{cut}", cache_dir=tmp_path / "c")
    one_line(err)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    other = tmp_path / "other.tgz"
    with tarfile.open(other, "w:gz") as tf:
        tf.add(cifar_sets[0] / "tree" / "train", arcname="images")
    with pytest.raises(CondenseError, match="not an image tree with train/ and test/") as err:
        load_data(f"cifar10:{other}", cache_dir=tmp_path / "c")
    one_line(err)


def test_mismatched_classes_and_corrupt_image(tmp_path):
    x, y = cifar_images(1, 3, seed=5)
    write_tree(tmp_path / "t", {"train": (x, y), "test": (x[:2], y[:2])}, ("a", "b", "c"))
    with pytest.raises(CondenseError, match="only in train: c") as err:
        load_data(f"cifar10:{tmp_path / 't'}", cache_dir=tmp_path / "c")
    one_line(err)
    (tmp_path / "t" / "test").rename(tmp_path / "t" / "val")
    with pytest.raises(CondenseError, match="class folders differ between train/ and val/") as err:
        load_data(f"imagefolder:{tmp_path / 't'}")
    one_line(err)
    write_tree(tmp_path / "u", {"train": (x, y), "test": (x, y)}, ("a", "b", "c"))
    (tmp_path / "u" / "test" / "b" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(CondenseError, match="cannot decode the image") as err:
        load_data(f"cifar10:{tmp_path / 'u'}", cache_dir=tmp_path / "c")
    one_line(err)
    assert not any((tmp_path / "c").glob("*.npz"))


def test_pickles_that_run_code_are_refused(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    write_cifar10_pickles(d, cifar_images(1, 10, 0), cifar_images(1, 10, 1))
    (d / "data_batch_3").write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(CondenseError, match="refusing to load os.system") as err:
        load_data(f"cifar10:{d}", cache_dir=tmp_path)
    one_line(err)


# ------------------------------------------------------------------------------- sizes and augmentation


def write_grey_tree(root: Path, n_per_class: int = 2, classes=("a", "b", "c"), side: int = 28) -> None:
    """A letters-like tree: grey PNGs of ``side`` pixels, train/ and val/."""
    rng = np.random.default_rng(7)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for k in range(n_per_class):
                Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), mode="L").save(
                    root / split / c / f"{k}.png"
                )


def test_imagefolder_of_small_grey_images_is_read_at_their_size_without_augmentation(tmp_path):
    write_grey_tree(tmp_path / "letters")
    b = load_data(f"imagefolder:{tmp_path / 'letters'}")
    assert (b.name, b.num_classes, b.input_size, b.augment) == ("letters", 3, (3, 28, 28), "none")
    x, _ = next(iter(b.loader("train", 6, shuffle=False, augment=True)))
    assert x.shape == (6, 3, 28, 28)
    plain = next(iter(b.loader("train", 6, shuffle=False, augment=False)))[0]
    assert torch.equal(x, plain)  # "none": the training batches are the test transform's
    grey = load_data(f"imagefolder:{tmp_path / 'letters'}", input_size=(1, 28, 28))
    xg, _ = next(iter(grey.loader("val", 6, shuffle=False, augment=False)))
    assert xg.shape == (6, 1, 28, 28) and len(grey.mean) == 1
    small = load_data(f"imagefolder:{tmp_path / 'letters'}", input_size="3x20x20", augment="crop-flip")
    xs, _ = next(iter(small.loader("train", 6, shuffle=True, augment=True)))
    assert xs.shape == (6, 3, 20, 20) and small.augment == "crop-flip"


def test_imagefolder_defaults_crop_flip_for_small_colour_and_timm_for_photos(tmp_path):
    x, y = cifar_images(1, 2, seed=8)
    write_tree(tmp_path / "small", {"train": (x, y), "val": (x, y)}, ("p", "q"))
    b = load_data(f"imagefolder:{tmp_path / 'small'}")
    assert (b.input_size, b.augment) == ((3, 32, 32), "crop-flip")
    big = np.random.default_rng(9).integers(0, 256, (2, 3, 150, 160), dtype=np.uint8)
    write_tree(tmp_path / "photos", {"train": (big, [0, 1]), "val": (big, [0, 1])}, ("p", "q"), ext=".jpg")
    p = load_data(f"imagefolder:{tmp_path / 'photos'}")
    assert (p.input_size, p.augment) == ((3, 224, 224), "timm")
    assert next(iter(p.loader("train", 2, shuffle=False, augment=True)))[0].shape == (2, 3, 224, 224)
    none = p.with_augment("none")
    a, c = (next(iter(none.loader("train", 2, shuffle=False, augment=aug)))[0] for aug in (True, False))
    assert none.augment == "none" and torch.equal(a, c) and p.augment == "timm"


def test_in_memory_defaults_and_choices(cifar_sets, tmp_path):
    write_mnist_idx(tmp_path / "m")
    assert load_data(f"mnist:{tmp_path / 'm'}", cache_dir=tmp_path / "c").augment == "none"
    b = load_data(f"cifar10:{cifar_sets[0] / 'pickles'}", cache_dir=tmp_path)
    assert (b.name, b.augment) == ("cifar10", "crop-flip")
    plain = b.with_augment("none")
    kw = dict(shuffle=True, seed=5)
    assert torch.equal(
        torch.cat([x for x, _ in plain.loader("train", 8, augment=True, **kw)]),
        torch.cat([x for x, _ in b.loader("train", 8, augment=False, **kw)]),
    )
    for bad, needle in (("timm", "works on image files"), ("flip", "unknown augmentation 'flip'")):
        with pytest.raises(CondenseError, match=needle) as err:
            load_data(f"cifar10:{cifar_sets[0] / 'pickles'}", cache_dir=tmp_path, augment=bad)
        one_line(err)
        with pytest.raises(CondenseError, match=needle):
            b.with_augment(bad)


def test_a_tree_read_as_cifar10_is_named_after_itself_and_grey_trees_are_not_flipped(tmp_path):
    write_grey_tree(tmp_path / "letters", classes=tuple("abcd"))
    (tmp_path / "letters" / "val").rename(tmp_path / "letters" / "test")
    b = load_data(f"cifar10:{tmp_path / 'letters'}", cache_dir=tmp_path / "c")
    assert (b.name, b.num_classes, b.input_size, b.augment) == ("letters", 4, (3, 28, 28), "none")
    with tarfile.open(tmp_path / "letters.tar.gz", "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(tmp_path / "letters" / split, arcname=split)
    assert load_data(f"cifar10:{tmp_path / 'letters.tar.gz'}", cache_dir=tmp_path / "c").name == "letters"


@settings(max_examples=60, deadline=None, database=None)  # no .hypothesis/ folder in the tree
@given(
    n=st.integers(0, 70),
    world=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    epoch=st.integers(0, 50),
    shuffle=st.booleans(),
)
def test_every_epoch_is_a_distributed_samplers_shards(n, world, seed, epoch, shuffle):
    """For any size, world size, seed and epoch: each rank's order is what torch's DistributedSampler gives,
    every rank gets ceil(n / world) samples and together they cover the split."""
    shards = [
        data._shard_order(n, shuffle=shuffle, seed=seed, epoch=epoch, rank=r, world_size=world) for r in range(world)
    ]
    for rank, order in enumerate(shards):
        if n:
            sampler = torch.utils.data.DistributedSampler(
                range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed
            )
            sampler.set_epoch(epoch)
            assert order.tolist() == list(sampler)
        assert len(order) == (-(-n // world) if n else 0)
    assert set(torch.cat(shards).tolist()) == set(range(n))
