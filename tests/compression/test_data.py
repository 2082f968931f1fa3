"""The data module: digits, .npz files and image folders, the stratified split and the errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="natib.trials needs PyTorch: pip install -e '.[nas]'")
import torch

from natib.trials.data import Dataset, DatasetError, load_dataset, stratified_split


def test_digits_shapes_types_and_range() -> None:
    d = load_dataset()
    assert isinstance(d, Dataset)
    assert d.shape == (1, 8, 8) and d.num_classes == 10 and d.in_features == 64
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.train_x.shape[1:] == (1, 8, 8) and d.val_x.shape[1:] == (1, 8, 8)
    assert len(d.train_x) + len(d.val_x) == 1797
    assert abs(len(d.val_x) / 1797 - 0.2) < 0.01
    assert float(d.train_x.min()) == 0.0 and float(d.train_x.max()) == 1.0
    assert set(d.val_y.tolist()) == set(range(10))


def test_digits_split_is_stratified_and_deterministic() -> None:
    a, b, c = load_dataset(seed=3), load_dataset(seed=3), load_dataset(seed=4)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.val_x, c.val_x)
    counts_all = torch.bincount(torch.cat([a.train_y, a.val_y]), minlength=10)
    counts_val = torch.bincount(a.val_y, minlength=10)
    for total, val in zip(counts_all.tolist(), counts_val.tolist(), strict=True):
        assert abs(val - 0.2 * total) <= 1
    with pytest.raises(dataclass_error()):
        a.num_classes = 3  # type: ignore[misc]


def dataclass_error() -> type[Exception]:
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError


def test_val_fraction_changes_the_split_and_is_checked() -> None:
    d = load_dataset(val_fraction=0.5)
    assert abs(len(d.val_x) - 1797 / 2) < 10
    for bad in (0.0, 1.0, -0.1, 2):
        with pytest.raises(DatasetError, match="val_fraction"):
            load_dataset(val_fraction=bad)


def test_stratified_split_keeps_one_of_each_side_for_small_classes() -> None:
    y = np.array([0, 0, 1, 1, 1, 2])
    tr, va = stratified_split(y, seed=0, val_fraction=0.1)
    assert sorted(set(y[tr])) == [0, 1, 2]
    assert sorted(set(y[va])) == [0, 1]  # the single sample of class 2 stays in training
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == len(y)


def test_npz_x_y_grayscale_uint8_is_scaled_and_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 5, 7), dtype=np.uint8)
    y = np.repeat(np.array([3, 7, 9]), 20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset(str(tmp_path / "d.npz"), seed=1)
    assert d.shape == (1, 5, 7) and d.num_classes == 3
    assert len(d.train_x) == 48 and len(d.val_x) == 12
    assert float(d.train_x.max()) <= 1.0 and float(d.train_x.min()) >= 0.0
    assert set(d.train_y.tolist()) == {0, 1, 2}  # 3, 7, 9 numbered in order
    whole = torch.cat([d.train_x, d.val_x]).flatten(1).mul(255).round()
    assert sorted(whole.sum(1).tolist()) == sorted(torch.from_numpy(x.astype(np.float32)).flatten(1).sum(1).tolist())


def test_npz_channels_last_rgb_and_string_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((40, 6, 6, 3)).astype(np.float32)
    y = np.array(["cat", "dog"] * 20)
    np.savez(tmp_path / "rgb.npz", x=x, y=y)
    d = load_dataset(str(tmp_path / "rgb.npz"))
    assert d.shape == (3, 6, 6) and d.num_classes == 2
    first = d.train_x[0]
    assert any(torch.allclose(first, torch.from_numpy(img).permute(2, 0, 1)) for img in x)


def test_npz_with_explicit_split_is_used_as_given(tmp_path: Path) -> None:
    xt = np.zeros((10, 2, 4, 4), dtype=np.float32)
    xv = np.ones((4, 2, 4, 4), dtype=np.float32)
    np.savez(tmp_path / "s.npz", x_train=xt, y_train=np.array([0, 1] * 5), x_val=xv, y_val=np.array([1, 2, 1, 2]))
    d = load_dataset(str(tmp_path / "s.npz"), seed=5)
    assert d.shape == (2, 4, 4) and d.num_classes == 3
    assert len(d.train_x) == 10 and float(d.train_x.sum()) == 0.0
    assert len(d.val_x) == 4 and float(d.val_x.min()) == 1.0
    assert d.val_y.tolist() == [1, 2, 1, 2]


@pytest.mark.parametrize(("arrays", "message"), [
    ({"images": np.zeros((4, 2, 2)), "labels": np.zeros(4)}, "expected arrays x and y.*found images, labels"),
    ({"x": np.zeros((4, 2, 2)), "y": np.array([0, 1, 0])}, "4 images but 3 labels"),
    ({"x": np.zeros((4, 5)), "y": np.array([0, 1, 0, 1])}, r"x: images must be .*got shape \(4, 5\)"),
    ({"x": np.zeros((4, 9, 9, 9)), "y": np.array([0, 1, 0, 1])}, "cannot tell the channel axis"),
    ({"x": np.full((4, 2, 2), np.nan), "y": np.array([0, 1, 0, 1])}, "NaN"),
    ({"x": np.zeros((4, 2, 2)), "y": np.zeros(4)}, "at least 2 classes"),
    ({"x": np.zeros((4, 2, 2)), "y": np.array([0.5, 1, 0, 1])}, "non-integral"),
    ({"x": np.zeros((4, 2, 2)), "y": np.zeros((4, 2))}, "one-dimensional"),
    ({"x_train": np.zeros((4, 2, 2)), "y_train": np.array([0, 1, 0, 1]), "x_val": np.zeros((2, 3, 3)),
      "y_val": np.array([0, 1])}, "x_train images are"),
])
def test_npz_errors_name_the_file_and_the_problem(tmp_path: Path, arrays: dict[str, np.ndarray],
                                                  message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(str(path))
    assert str(path) in str(err.value)


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or directory") as err:
        load_dataset(str(tmp_path / "missing.npz"))
    assert "missing.npz" in str(err.value)
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DatasetError, match=r"data.csv: not a .npz file or a directory"):
        load_dataset(str(tmp_path / "data.csv"))
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(DatasetError, match=r"broken.npz: cannot read as .npz"):
        load_dataset(str(tmp_path / "broken.npz"))


def _write_images(root: Path, classes: dict[str, int], mode: str = "L", size: tuple[int, int] = (6, 5)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")


def test_image_directory_grayscale(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", {"b": 6, "a": 4})
    (tmp_path / "imgs" / "a" / "notes.txt").write_text("not an image")
    d = load_dataset(str(tmp_path / "imgs"))
    assert d.shape == (1, 5, 6) and d.num_classes == 2
    assert len(d.train_x) + len(d.val_x) == 10
    assert torch.bincount(torch.cat([d.train_y, d.val_y])).tolist() == [4, 6]  # a=0, b=1 in sorted order
    assert 0.0 <= float(d.train_x.min()) and float(d.train_x.max()) <= 1.0


def test_image_directory_with_any_color_image_is_rgb(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", {"x": 3, "y": 3})
    _write_images(tmp_path / "more", {"z": 2}, mode="RGB")
    (tmp_path / "more" / "z").rename(tmp_path / "imgs" / "z")
    d = load_dataset(str(tmp_path / "imgs"))
    assert d.shape == (3, 5, 6) and d.num_classes == 3


@pytest.mark.parametrize("case", ["size", "empty", "one-class", "corrupt"])
def test_image_directory_errors(tmp_path: Path, case: str) -> None:
    root = tmp_path / "imgs"
    if case == "one-class":
        _write_images(root, {"only": 3})
        expected, where = "at least 2 classes", root
    else:
        _write_images(root, {"a": 2, "b": 2})
        if case == "size":
            _write_images(tmp_path / "big", {"c": 1}, size=(9, 9))
            (tmp_path / "big" / "c").rename(root / "c")
            expected, where = "must have the same size", root / "c" / "0.png"
        elif case == "empty":
            (root / "c").mkdir()
            expected, where = "holds no images", root / "c"
        else:
            (root / "b" / "9.png").write_bytes(b"garbage")
            expected, where = "cannot read image", root / "b" / "9.png"
    with pytest.raises(DatasetError, match=expected) as err:
        load_dataset(str(root))
    assert str(where) in str(err.value)


def test_image_directory_without_pillow_is_a_clear_error(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", {"a": 2, "b": 2})
    code = ("import sys; sys.modules['PIL'] = None\n"
            "from natib.trials.data import load_dataset, DatasetError\n"
            f"try:\n    load_dataset({str(tmp_path / 'imgs')!r})\n"
            "except DatasetError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "needs Pillow" in out.stdout and "imgs" in out.stdout


def test_importing_natib_does_not_import_torch() -> None:
    code = "import sys, natib, natib.trials, natib.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
