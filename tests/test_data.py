"""Tests for vivat.data: folder scanning, colour conversion, robustness, deterministic augmentation, I/O."""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vivat import data as D

SHARED_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared/data/photos"


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """A small tree: nested folders, mixed formats and cases, colour modes, and non-images."""
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    Image.fromarray(_rgb(48, 64, 1)).save(root / "a.png")
    Image.fromarray(_rgb(40, 40, 2)).save(root / "sub" / "b.JPG", quality=95)
    Image.fromarray(_rgb(50, 36, 3)).save(root / "sub" / "deeper" / "c.webp", lossless=True)
    Image.fromarray(_rgb(40, 45, 4)[..., 0]).save(root / "d_gray.jpeg")  # mode L
    rgba = np.dstack([_rgb(40, 40, 5), np.zeros((40, 40), np.uint8)])  # fully transparent
    Image.fromarray(rgba, "RGBA").save(root / "e_rgba.PNG")
    Image.fromarray(_rgb(40, 40, 6)).convert("P", palette=Image.ADAPTIVE).save(root / "f_pal.png")
    Image.fromarray(_rgb(40, 40, 7)).save(root / ".hidden" / "g.png")  # ignored
    (root / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------------------- scanning


def test_recursive_scan_formats_and_order(folder):
    paths = D.scan_images(folder)
    rel = [p.relative_to(folder).as_posix() for p in paths]
    assert rel == sorted(rel)
    assert rel == ["a.png", "d_gray.jpeg", "e_rgba.PNG", "f_pal.png", "sub/b.JPG", "sub/deeper/c.webp"]
    ds = D.ImageFolderDataset(folder, 32)
    assert len(ds) == 6 and ds.found == 6
    assert ds.stats()["skipped_unreadable"] == 0 and ds.stats()["skipped_small"] == 0


def test_items_shape_range_dtype(folder):
    for train in (True, False):
        ds = D.ImageFolderDataset(folder, 32, train=train, seed=1)
        for i in range(len(ds)):
            x = ds[i]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            assert x.min() >= -1.0 and x.max() <= 1.0


def test_colour_conversion(folder):
    g = D.load_image(folder / "d_gray.jpeg")
    assert g.shape == (3, 40, 45)
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    t = D.load_image(folder / "e_rgba.PNG")  # transparent -> composited over white
    assert t.shape == (3, 40, 40) and torch.all(t == 1.0)
    p = D.load_image(folder / "f_pal.png")
    assert p.shape == (3, 40, 40) and 0.0 <= p.min() and p.max() <= 1.0
    a = D.load_image(folder / "a.png")
    assert torch.allclose(a, torch.from_numpy(_rgb(48, 64, 1)).permute(2, 0, 1).float() / 255)


def test_center_crop_when_not_training(folder):
    ds = D.ImageFolderDataset(folder, 32, train=False)
    x = ds[0]  # a.png, 48x64
    ref = D.load_image(folder / "a.png")[:, 8:40, 16:48] * 2 - 1
    assert torch.allclose(x, ref)
    assert torch.equal(ds[0], ds[0])


def test_center_crop_sizes_and_offsets():
    t = torch.arange(7 * 10).reshape(1, 7, 10)
    assert torch.equal(D.center_crop(t, 4), t[:, 1:5, 3:7])  # odd excess: the extra row goes at the bottom
    assert torch.equal(D.center_crop(t, (3, 6)), t[:, 2:5, 2:8])
    assert torch.equal(D.center_crop(t, 100), t)  # a size beyond the image keeps the image's
    assert torch.equal(D.center_crop(t, 8), t[:, :, 1:9])
    assert torch.equal(D.center_crop(t, multiple=4), t[:, 1:5, 1:9])
    assert torch.equal(D.center_crop(t, 9, multiple=4), t[:, 1:5, 1:9])
    assert D.center_crop(t, 4).data_ptr() == t[:, 1:5, 3:7].data_ptr()  # a view, not a copy
    batch = torch.rand(2, 3, 9, 9)
    assert torch.equal(D.center_crop(batch, 5), batch[..., 2:7, 2:7])
    for bad in (0, (3,), (3, -1), 2.5, True):
        with pytest.raises(ValueError, match="size"):
            D.center_crop(t, bad)
    with pytest.raises(ValueError, match="multiple"):
        D.center_crop(t, multiple=0)
    with pytest.raises(ValueError, match="pad it instead"):
        D.center_crop(t, multiple=8)
    with pytest.raises(ValueError, match="tensor"):
        D.center_crop(np.zeros((4, 4)), 2)


def test_reflect_pad_to_matches_the_dataset_padding(tmp_path):
    img = torch.rand(3, 5, 12)
    out = D.reflect_pad_to(img, 16)
    assert out.shape == (3, 16, 16) and torch.equal(D.center_crop(out, (5, 12)), img)
    assert torch.equal(out[:, 4, 2:14], out[:, 6, 2:14])  # mirrored about the image's first row (row 5)
    assert torch.equal(out[:, 5:10, 1], out[:, 5:10, 3])  # and about its first column (column 2)
    root = tmp_path / "small"
    root.mkdir()
    arr = _rgb(5, 12, 4)
    Image.fromarray(arr).save(root / "s.png")
    ds = D.ImageFolderDataset(root, 16, train=False)
    expected = D.reflect_pad_to(D.load_image(root / "s.png"), 16) * 2 - 1
    assert torch.allclose(ds[0], expected)
    assert D.reflect_pad_to(img, 4) is img


# ---------------------------------------------------------------------------- small images


def test_small_images_padded_or_skipped(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    Image.fromarray(_rgb(64, 64, 1)).save(root / "big.png")
    Image.fromarray(_rgb(20, 40, 2)).save(root / "short.png")
    Image.fromarray(_rgb(10, 12, 3)).save(root / "tiny.png")

    padded = D.ImageFolderDataset(root, 32, small="pad", seed=0)
    assert len(padded) == 3 and padded.padded == 2 and padded.skipped_small == 0
    for i in range(3):
        assert padded[i].shape == (3, 32, 32)
    # reflect padding of the 20-row image: row 6+k mirrors row 6-k around the first real row (6)
    v = D.ImageFolderDataset(root, 32, train=False)
    x = v[1]  # short.png: 20x40 -> padded to 32 rows (6 above, 6 below), center 32 of 40 columns
    assert torch.allclose(x[:, 5], x[:, 7]) and torch.allclose(x[:, 0], x[:, 12])

    skipped = D.ImageFolderDataset(root, 32, small="skip")
    assert len(skipped) == 1 and skipped.skipped_small == 2 and skipped.found == 3
    assert skipped.paths == [root / "big.png"]

    with pytest.raises(ValueError, match="no usable images"):
        D.ImageFolderDataset(root, 100, small="skip")


# ---------------------------------------------------------------------------- robustness


def test_corrupt_file_skipped_with_warning(folder):
    (folder / "x.png").write_bytes(b"\x00garbage, not a png" * 10)
    with pytest.warns(RuntimeWarning, match="x.png"):
        ds = D.ImageFolderDataset(folder, 32)
    assert ds.found == 7 and len(ds) == 6 and ds.skipped_unreadable == 1
    assert all(p.name != "x.png" for p in ds.paths)


def test_file_failing_at_load_is_replaced_deterministically(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(48, 48, i)).save(root / f"{i}.png")
    data = (root / "1.png").read_bytes()
    (root / "1.png").write_bytes(data[: len(data) // 2])  # valid header, truncated pixels

    ds = D.ImageFolderDataset(root, 32, seed=3)
    assert len(ds) == 3  # the header is fine at scan time
    with pytest.warns(RuntimeWarning, match="1.png"):
        a = ds[1]
    assert a.shape == (3, 32, 32) and ds.failed_at_load == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for the same file
        assert torch.equal(ds[1], a)
    ds2 = D.ImageFolderDataset(root, 32, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor for a second dataset of the folder (e.g. validation crops)
        assert torch.equal(ds2[1], a)
    assert ds2.failed_files() == [str(root / "1.png")] and ds2.stats()["failed_at_load"] == 1


def test_empty_missing_and_imageless_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=str(empty)):
        D.ImageFolderDataset(empty, 32)
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=str(missing)):
        D.ImageFolderDataset(missing, 32)
    txt = tmp_path / "txt"
    txt.mkdir()
    (txt / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=str(txt)):
        D.ImageFolderDataset(txt, 32)
    with pytest.raises(ValueError):
        D.ImageFolderDataset(txt, 32, small="stretch")


# ---------------------------------------------------------------------------- determinism


def test_augmentation_deterministic_given_seed_epoch_index(tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    for i in range(4):
        Image.fromarray(_rgb(96, 128, i)).save(root / f"{i}.png")
    a = D.ImageFolderDataset(root, 32, seed=7)
    b = D.ImageFolderDataset(root, 32, seed=7)
    for i in range(4):
        assert torch.equal(a.get(i, epoch=2), b.get(i, epoch=2))
    assert torch.equal(a.get(3, epoch=2), b[(3, 2)])
    assert torch.equal(a.get(3), b[3]) and torch.equal(a.get(3, epoch=0), b[3])  # a plain index reads epoch 0
    # epochs and seeds change the crops
    assert any(not torch.equal(a.get(i, 0), a.get(i, 1)) for i in range(4))
    c = D.ImageFolderDataset(root, 32, seed=8)
    assert any(not torch.equal(a.get(i, 0), c.get(i, 0)) for i in range(4))
    # the same with DataLoader workers as in-process
    seq = torch.stack([a[(i, 5)] for i in range(4)])
    for workers in (0, 2):
        order = [(i, 5) for i in range(4)]
        dl = torch.utils.data.DataLoader(a, batch_size=2, num_workers=workers, sampler=order)
        got = torch.cat(list(dl))
        assert torch.equal(got, seq), workers


# ---------------------------------------------------------------------------- demo data and I/O


def test_demo_images_offline(tmp_path):
    demo = D.demo_images(tmp_path / "demo")
    assert len(demo.train) >= 4 and len(demo.val) >= 2
    assert all(p.parent == demo.train_dir for p in demo.train)
    assert all(p.parent == demo.val_dir for p in demo.val)
    assert not {p.name for p in demo.train} & {p.name for p in demo.val}
    digests = set()
    for p in demo.all:
        x = D.load_image(p)
        assert x.shape[0] == 3 and min(x.shape[1:]) >= 256
        digests.add(hashlib.sha256(x.numpy().tobytes()).hexdigest())
    assert len(digests) == len(demo.all)  # all distinct pictures
    ds = D.ImageFolderDataset(demo.train_dir, 256, seed=0)
    assert len(ds) == len(demo.train) and ds[0].shape == (3, 256, 256)


def test_save_image_atomic_png_and_grid(tmp_path):
    x = torch.rand(3, 10, 14)
    p = D.save_image(x, tmp_path / "out" / "img.png")
    assert p.is_file() and [f.name for f in p.parent.iterdir()] == ["img.png"]  # no temp file left
    y = D.load_image(p)
    assert y.shape == (3, 10, 14)
    assert (y - x).abs().max() <= 0.5 / 255 + 1e-6
    D.save_image(x.unsqueeze(0), p)  # batch of one, overwrites
    with pytest.raises(ValueError):
        D.save_image(x, tmp_path / "img.jpg")

    rows = [[x, x], torch.rand(3, 3, 8, 12)]
    g = D.save_grid(rows, tmp_path / "grid.png", padding=2)
    gi = D.load_image(g)
    assert gi.shape == (3, 2 * 10 + 3 * 2, 3 * 14 + 4 * 2)


@pytest.mark.skipif(not (SHARED_PHOTOS / "train").is_dir(), reason="shared photos not present")
def test_shared_photos_train_folder():
    ds = D.ImageFolderDataset(SHARED_PHOTOS / "train", 256, seed=0)
    assert len(ds) == 40 and ds.skipped_unreadable == 0
    x = ds[0]
    assert x.shape == (3, 256, 256) and -1 <= x.min() and x.max() <= 1


# ---------------------------------------------------------------------------- augmentation, cache


def _one_image(tmp_path, h, w, seed=0):
    root = tmp_path / f"one{seed}"
    root.mkdir()
    Image.fromarray(_rgb(h, w, seed)).save(root / "x.png")
    return root


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": (0.8, 0.5)}, "scale"),
        ({"scale": (0.5, 1.5)}, "scale"),
        ({"scale": "half"}, "scale"),
        ({"color": "sepia"}, "color"),
        ({"cache_mb": -1}, "cache_mb"),
        ({"cache_mb": True}, "cache_mb"),
    ],
)
def test_augmentation_arguments_checked(tmp_path, kwargs, word):
    root = _one_image(tmp_path, 40, 40)
    with pytest.raises(ValueError, match=word):
        D.ImageFolderDataset(root, 32, **kwargs)


@pytest.mark.parametrize("color", D.COLOR_AUGMENTATIONS)
def test_augmented_crops_are_reproducible_and_in_range(tmp_path, color):
    root = _one_image(tmp_path, 97, 130, seed=3)
    a = D.ImageFolderDataset(root, 32, seed=5, scale=(0.3, 1.0), color=color)
    b = D.ImageFolderDataset(root, 32, seed=5, scale=(0.3, 1.0), color=color)
    for epoch in range(4):
        x, y = a.get(0, epoch), b.get(0, epoch)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(x, y)
        assert x.min() >= -1.0 and x.max() <= 1.0
    assert not torch.equal(a.get(0, 0), a.get(0, 1))


def test_zoom_out_is_an_antialiased_resize_of_the_region(tmp_path):
    """scale (0.5, 0.5) on a 64x64 image with 32-px crops: the whole image, downscaled 2x."""
    root = _one_image(tmp_path, 64, 64, seed=4)
    ds = D.ImageFolderDataset(root, 32, seed=0, scale=(0.5, 0.5))
    full = D.load_image(root / "x.png")
    want = F.interpolate(full[None], size=(32, 32), mode="bilinear", antialias=True, align_corners=False)[0]
    for epoch in range(6):  # either flip
        got = (ds.get(0, epoch) + 1.0) / 2.0
        assert torch.allclose(got, want, atol=1e-6) or torch.allclose(got, want.flip(-1), atol=1e-6)


def test_zoom_out_never_asks_for_more_than_the_image(tmp_path):
    root = _one_image(tmp_path, 40, 200, seed=5)  # short side 40: a 0.1 zoom of 32 px wants 320
    ds = D.ImageFolderDataset(root, 32, seed=1, scale=(0.1, 0.2))
    for epoch in range(5):
        assert ds.get(0, epoch).shape == (3, 32, 32)


def test_permute_keeps_the_pixels_of_each_channel(tmp_path):
    root = _one_image(tmp_path, 32, 32, seed=6)
    plain = D.ImageFolderDataset(root, 32, seed=2)
    perm = D.ImageFolderDataset(root, 32, seed=2, color="permute")
    seen = set()
    for epoch in range(12):
        x, y = plain.get(0, epoch), perm.get(0, epoch)  # same crop and flip: only the order differs
        order = [next(j for j in range(3) if torch.equal(y[i], x[j])) for i in range(3)]
        assert sorted(order) == [0, 1, 2]
        seen.add(tuple(order))
    assert len(seen) > 1


def test_hue_rotation_keeps_luma_where_nothing_clips(tmp_path):
    root = tmp_path / "soft"
    root.mkdir()
    arr = (96 + np.random.default_rng(0).integers(0, 64, size=(32, 32, 3))).astype(np.uint8)  # mid tones
    Image.fromarray(arr).save(root / "x.png")
    plain = D.ImageFolderDataset(root, 32, seed=3)
    hue = D.ImageFolderDataset(root, 32, seed=3, color="hue")
    luma = torch.tensor([0.299, 0.587, 0.114])
    changed = False
    for epoch in range(6):
        x, y = (plain.get(0, epoch) + 1) / 2, (hue.get(0, epoch) + 1) / 2
        torch.testing.assert_close(
            torch.einsum("c,chw->hw", luma, y), torch.einsum("c,chw->hw", luma, x), atol=1e-5, rtol=0
        )
        changed |= not torch.allclose(x, y, atol=1e-3)
    assert changed


def test_decoded_images_are_cached_within_the_budget(tmp_path, monkeypatch):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(40, 40, i)).save(root / f"{i}.png")
    calls = []
    real = D._open_rgb
    monkeypatch.setattr(D, "_open_rgb", lambda p: calls.append(p.name) or real(p))
    one_image_mb = 40 * 40 * 3 * 4 / 2**20
    cached = D.ImageFolderDataset(root, 32, seed=0, cache_mb=2.5 * one_image_mb)
    for epoch in range(3):
        for i in range(3):
            cached.get(i, epoch)
    # room for two: 0, 1 cached; 2 evicts 0; then each read misses the one just evicted (LRU)
    assert len(calls) > 3 and cached._cache.used <= 2.5 * one_image_mb * 2**20
    calls.clear()
    for _ in range(4):
        cached.get(2, 0)
    assert calls == []  # the most recent one stays
    off = D.ImageFolderDataset(root, 32, seed=0)
    calls.clear()
    off.get(0), off.get(0)
    assert calls == ["0.png", "0.png"]
    again = D.ImageFolderDataset(root, 32, seed=0, cache_mb=10)
    assert torch.equal(again.get(1, 2), D.ImageFolderDataset(root, 32, seed=0).get(1, 2))
