"""Data sets for the trial programs: scikit-learn's digits by default, or the user's own files.

``load_dataset()`` returns a :class:`Dataset` of float32 image tensors shaped (N, C, H, W) and int64 labels,
split into training and validation parts. Sources:

- nothing (``path=None``): scikit-learn's bundled 8x8 digits (1 channel, 10 classes, no download), pixels
  scaled to [0, 1];
- an ``.npz`` file with either ``x`` and ``y`` (split here) or ``x_train``, ``y_train``, ``x_val``, ``y_val``
  (used as given). Images are (N, H, W) (one channel), (N, C, H, W), or (N, H, W, C) when the last axis has
  1, 3 or 4 entries and the second does not. Integer pixels are scaled to [0, 1] (uint8 by 1/255, other
  integer types by the largest value); float pixels are kept as they are. Labels may be any integers or
  strings; they are numbered in sorted order;
- a directory with one subfolder per class holding image files (read with Pillow): the class names are the
  subfolder names in sorted order; all-grayscale images give one channel, anything else is converted to RGB.
  Every image must have the same size.

The split is stratified (each class keeps its share in both parts) and depends only on ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


class DatasetError(ValueError):
    """A data set that cannot be loaded; the message names the path and what is wrong."""


@dataclass(frozen=True)
class Dataset:
    """Training and validation tensors of one data set."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    shape: tuple[int, int, int]
    num_classes: int
    name: str = "digits"

    @property
    def in_features(self) -> int:
        """Number of values in one image (C*H*W)."""
        c, h, w = self.shape
        return c * h * w


def load_dataset(path: str | None = None, *, seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    """Load digits (``path=None``), an ``.npz`` file or an image directory, split by ``seed``."""
    if not (isinstance(val_fraction, int | float) and 0.0 < val_fraction < 1.0):
        raise DatasetError(f"val_fraction: must be between 0 and 1 (exclusive), got {val_fraction!r}")
    if path is None or path == "" or path == "digits":
        x, y, classes = _digits()
        name = "digits"
        return _split(x, y, classes, seed=seed, val_fraction=val_fraction, name=name)
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if p.is_dir():
        x, y, classes = _image_dir(p)
        return _split(x, y, classes, seed=seed, val_fraction=val_fraction, name=str(p.resolve()))
    if p.suffix.lower() == ".npz":
        return _npz(p, seed=seed, val_fraction=val_fraction)
    raise DatasetError(f"{path}: not a .npz file or a directory of class subfolders")


def _digits() -> tuple[np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, bunch.target.astype(np.int64), 10


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(
        np.ascontiguousarray(y, dtype=np.int64))


def stratified_split(y: np.ndarray, *, seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): each class shuffled by ``seed``, ``round(n * val_fraction)`` of it to validation.

    A class with at least two samples keeps at least one on each side.
    """
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(len(idx))]
        n_val = math.floor(len(idx) * val_fraction + 0.5)
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _split(x: np.ndarray, y: np.ndarray, classes: int, *, seed: int, val_fraction: float, name: str) -> Dataset:
    tr, va = stratified_split(y, seed=seed, val_fraction=val_fraction)
    if len(va) == 0:
        raise DatasetError(f"{name}: too few samples to split off a validation set ({len(y)} samples)")
    train_x, train_y = _to_tensors(x[tr], y[tr])
    val_x, val_y = _to_tensors(x[va], y[va])
    shape = tuple(int(s) for s in x.shape[1:])
    return Dataset(train_x, train_y, val_x, val_y, shape, classes, name)  # type: ignore[arg-type]


def _images(x: np.ndarray, where: str) -> np.ndarray:
    """(N, C, H, W) float32 from the layouts the module docstring lists."""
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DatasetError(f"{where}: images must be numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        if x.shape[1] not in (1, 2, 3, 4) and x.shape[3] in (1, 3, 4):
            x = np.transpose(x, (0, 3, 1, 2))
        elif x.shape[1] not in (1, 2, 3, 4):
            raise DatasetError(f"{where}: cannot tell the channel axis of shape {x.shape}; "
                               "use (N, C, H, W) or (N, H, W, C) with 1, 3 or 4 channels")
    else:
        raise DatasetError(f"{where}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    if len(x) == 0:
        raise DatasetError(f"{where}: no images")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        top = 255.0 if x.dtype == np.uint8 else float(max(int(x.max()), 1))
        x = x.astype(np.float32) / top
    else:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DatasetError(f"{where}: images contain NaN or infinite values")
    return x


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1:
        raise DatasetError(f"{where}: labels must be one-dimensional, got shape {y.shape}")
    if len(y) != n:
        raise DatasetError(f"{where}: {n} images but {len(y)} labels")
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.mod(y, 1) == 0):
        raise DatasetError(f"{where}: labels must be integers or strings, got non-integral floats")
    return y


def _npz(p: Path, *, seed: int, val_fraction: float) -> Dataset:
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise DatasetError(f"{p}: cannot read as .npz: {exc}") from exc
    keys = set(arrays)
    if {"x", "y"} <= keys:
        x = _images(arrays["x"], f"{p}: x")
        y = _labels(arrays["y"], len(x), f"{p}: y")
        names, codes = np.unique(y, return_inverse=True)
        if len(names) < 2:
            raise DatasetError(f"{p}: y: need at least 2 classes, got {len(names)}")
        return _split(x, codes.astype(np.int64), len(names), seed=seed, val_fraction=val_fraction, name=str(p))
    split_keys = {"x_train", "y_train", "x_val", "y_val"}
    if split_keys <= keys:
        xt = _images(arrays["x_train"], f"{p}: x_train")
        xv = _images(arrays["x_val"], f"{p}: x_val")
        yt = _labels(arrays["y_train"], len(xt), f"{p}: y_train")
        yv = _labels(arrays["y_val"], len(xv), f"{p}: y_val")
        if xt.shape[1:] != xv.shape[1:]:
            raise DatasetError(f"{p}: x_train images are {xt.shape[1:]} but x_val images are {xv.shape[1:]}")
        try:
            names, codes = np.unique(np.concatenate([yt, yv]), return_inverse=True)
        except TypeError as exc:
            raise DatasetError(f"{p}: y_train and y_val labels are of different kinds: {exc}") from exc
        if len(names) < 2:
            raise DatasetError(f"{p}: need at least 2 classes, got {len(names)}")
        codes = codes.astype(np.int64)
        train_x, train_y = _to_tensors(xt, codes[: len(yt)])
        val_x, val_y = _to_tensors(xv, codes[len(yt):])
        shape = tuple(int(s) for s in xt.shape[1:])
        return Dataset(train_x, train_y, val_x, val_y, shape, len(names), str(p))  # type: ignore[arg-type]
    raise DatasetError(f"{p}: expected arrays x and y, or x_train, y_train, x_val and y_val; "
                       f"found {', '.join(sorted(keys)) or 'none'}")


def _image_dir(root: Path) -> tuple[np.ndarray, np.ndarray, int]:
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError(f"{root}: reading an image directory needs Pillow (pip install pillow)") from None
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DatasetError(f"{root}: need one subfolder per class and at least 2 classes, found {len(classes)}")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        found = sorted(f for f in (root / cls).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DatasetError(f"{root / cls}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files.extend((f, label) for f in found)
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except Exception as exc:
            raise DatasetError(f"{f}: cannot read image: {exc}") from exc
    gray = all(im.mode in ("L", "1", "I", "I;16", "F") for im in images)
    mode = "L" if gray else "RGB"
    size = images[0].size
    arrays = []
    for (f, _), im in zip(files, images, strict=True):
        if im.size != size:
            raise DatasetError(f"{f}: image is {im.size[0]}x{im.size[1]} but {files[0][0]} is {size[0]}x{size[1]}; "
                               "all images must have the same size")
        a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
        arrays.append(a[None, :, :] if gray else np.transpose(a, (2, 0, 1)))
    x = np.stack(arrays)
    y = np.array([label for _, label in files], dtype=np.int64)
    return x, y, len(classes)
