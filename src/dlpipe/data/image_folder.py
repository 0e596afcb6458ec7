"""A researcher's own images: one sub-folder per class (`data.images.path`), PNG or JPEG files of any size.

Each image is decoded once with Pillow: converted to grayscale or RGB (`data.images.channels`), its shorter side
resized and the centre cropped to `data.images.size` square (`ImageOps.fit`), kept as uint8. The decoded images
are cached as N x C x H x W uint8 (data/downloads/image-cache/images-<key>.npz), keyed by the sha256 of every
file's path and bytes plus the size, channels and decoder version: an added, removed or changed image (or other
params) gives a new key and is decoded again; an unchanged folder is read from the cache.

Classes are the sub-folders, sorted by name. Files whose names start with "." are ignored (.DS_Store); every other
file must be a PNG or JPEG image Pillow decodes in full: anything else (not an image, truncated, unreadable) is
refused, all bad files named in one line. CMYK images and 16-bit grayscale PNGs (Pillow modes I;16, I, F) are
refused too rather than converted: Pillow converts CMYK without its colour profile and clips 16-bit gray values
instead of scaling them, and how to map 12 or 16 significant bits to 8 is the researcher's choice, so the model would
otherwise learn from silently distorted pixels. 16-bit RGB PNGs are taken (Pillow reads them scaled to 8 bits);
palette, 1-bit, grayscale-with-alpha and RGBA images are converted (alpha dropped).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlpipe.data.base import Dataset
from dlpipe.data.registry import register_dataset
from dlpipe.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("PNG", "JPEG")  # what Pillow reports for the files a folder may hold
CONVERTIBLE = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "YCbCr"}  # 8-bit modes taken as they are
DECODER_VERSION = 1  # bump when decoding changes: old caches are then never read
CACHE_DIR = "image-cache"  # under data/downloads (never a stage output, so DVC never deletes it)
BAD_SHOWN = 20  # bad files named in the one-line error


@dataclass(frozen=True)
class Folder:
    """The image files of a class-folder tree, sorted, with their class indices."""

    root: Path
    files: tuple[str, ...]  # paths relative to root, POSIX form
    labels: tuple[int, ...]
    class_names: tuple[str, ...]

    def class_counts(self) -> np.ndarray:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.class_names))

    def digest(self) -> str:
        """sha256 over every file's relative path and bytes: any added, removed, renamed or edited image changes it."""
        digest = hashlib.sha256()
        for rel in self.files:
            digest.update(rel.encode() + b"\0")
            with open(self.root / rel, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
        return digest.hexdigest()


def list_folder(root: Path) -> Folder:
    """The class folders under `root` and their files (hidden ones ignored); DataError naming what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.images.path: no such folder {str(root)!r}; expected one sub-folder per class")
    strays = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and not p.is_dir())
    if strays:
        raise DataError(
            f"{root}: file(s) outside a class folder: {_names(strays)}; put each image in the sub-folder of its class"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[str] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        found = sorted(
            p.relative_to(root).as_posix()
            for p in (root / name).rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not found:
            empty.append(name)
        files += found
        labels += [label] * len(found)
    if empty:
        raise DataError(f"{root}: class folder(s) without images: {_names(empty)}; add images or remove the folder")
    if len(classes) < 2:
        raise DataError(f"{root}: {len(classes)} class folder(s); at least 2 are needed (one sub-folder per class)")
    return Folder(root, tuple(files), tuple(labels), tuple(classes))


def fit_image(img: Any, height: int, width: int, channels: int) -> np.ndarray:
    """A PIL image as uint8 (channels, height, width): converted to grayscale (1) or RGB (3), its shorter side
    resized and the centre cropped (`ImageOps.fit`). ValueError for CMYK and more than 8 bits per channel."""
    from PIL import Image, ImageOps

    if img.mode == "CMYK":
        raise ValueError("CMYK image, save it as RGB")
    if img.mode not in CONVERTIBLE:
        raise ValueError(f"more than 8 bits per channel ({img.mode}), save it with 8")
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (width, height):
        img = ImageOps.fit(img, (width, height), method=Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    return array[None, :, :] if channels == 1 else array.transpose(2, 0, 1)


def decode_file(path: Path, size: int, channels: int) -> np.ndarray:
    """One PNG or JPEG file as uint8 (channels, size, size); ValueError saying why it is refused."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.format not in FORMATS:
                raise ValueError(f"a {img.format} image, not PNG or JPEG")
            img.load()  # the whole file: a truncated one fails here
            return fit_image(img, size, size, channels)
    except UnidentifiedImageError:
        raise ValueError("not an image") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split())[:80] or type(exc).__name__
        raise ValueError(f"unreadable: {reason}") from None


def decode_folder(folder: Folder, size: int, channels: int) -> np.ndarray:
    """Every image of `folder` as uint8 N x C x size x size; one DataError naming every bad file."""
    X = np.empty((len(folder.files), channels, size, size), dtype=np.uint8)
    bad: list[str] = []
    for i, rel in enumerate(folder.files):
        try:
            X[i] = decode_file(folder.root / rel, size, channels)
        except ValueError as exc:
            bad.append(f"{rel} ({exc})")
    if bad:
        raise DataError(
            f"{folder.root}: {len(bad)} bad image file(s) of {len(folder.files)}: {_names(bad, BAD_SHOWN)}; "
            "each must be a PNG or JPEG image with 8 bits per channel (gray or RGB): fix or remove them"
        )
    return X


def cache_key(digest: str, size: int, channels: int) -> str:
    return hashlib.sha256(f"{digest}:{size}:{channels}:{DECODER_VERSION}".encode()).hexdigest()


def load_folder(
    root: Path, size: int, channels: int, cache_dir: Path | None, digest: str | None = None
) -> tuple[Folder, np.ndarray, str]:
    """(the folder, its images as uint8 N x C x size x size, its content digest): from the cache when one was
    written for the same content and params, else decoded (and cached when `cache_dir` is given)."""
    folder = list_folder(root)
    digest = digest or folder.digest()
    cache = None if cache_dir is None else Path(cache_dir) / f"images-{cache_key(digest, size, channels)[:32]}.npz"
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as npz:
                X = npz["X"]
            if X.shape == (len(folder.files), channels, size, size) and X.dtype == np.uint8:
                return folder, X, digest
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is decoded again (and rewritten)
    X = decode_folder(folder, size, channels)
    if cache is not None:
        from dlpipe.io import atomic_path

        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, X=X)
        log.info("decoded %d images of %s into %s", len(X), root, cache)
    return folder, X, digest


def channel_count(channels: str) -> int:
    return 1 if channels == "gray" else 3


def cache_dir_of(downloads: Path) -> Path:
    return Path(downloads) / CACHE_DIR


@register_dataset("images", "image", "your images: data.images.path, one sub-folder per class (PNG/JPEG)")
def load_images(root: Path, data_params: Any) -> Dataset:
    images = data_params.images
    if not images.path:
        raise DataError("data.images.path: required when data.name is 'images'")
    channels = channel_count(images.channels)
    folder, X, _ = load_folder(Path(images.path), images.size, channels, cache_dir_of(root))
    labels = torch.tensor(folder.labels, dtype=torch.int64)  # X stays uint8 (a model sees X / 255), as for mnist
    return Dataset("images", torch.from_numpy(X), labels, "image", list(folder.class_names))


def _names(items: list[str], limit: int = BAD_SHOWN) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
