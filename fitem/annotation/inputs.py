"""Which images to annotate, and the stable key each gets in the manifest and the results tree."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from fitem.errors import InvalidInputError

__all__ = ["IMAGE_EXTENSIONS", "InputItem", "collect_inputs"]

#: File extensions (lower case) taken as images when a folder is searched.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


@dataclass(frozen=True)
class InputItem:
    """One image to annotate.

    Attributes:
        key: manifest key and results sub-folder: the path relative to the input folder without
            extension, ``/``-separated (``sub/dir/img001``); for a list input the file stem,
            de-duplicated with ``_2``, ``_3``, ... in list order.
        path: absolute path of the image.
        landmarks: absolute path of a sidecar iBUG ``<stem>.pts`` next to the image, or None
            (landmarks are then detected).
    """

    key: str
    path: str
    landmarks: str | None


def _sidecar(path: Path) -> str | None:
    pts = path.with_suffix(".pts")
    return str(pts) if pts.is_file() else None


def _unique(key: str, used: set[str]) -> str:
    if key not in used:
        return key
    n = 2
    while f"{key}_{n}" in used:
        n += 1
    return f"{key}_{n}"


def _walk_folder(root: Path, exclude: Path | None) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in dirnames:
            if d.startswith("."):
                continue
            if exclude is not None and (here / d).resolve() == exclude:
                continue  # never annotate our own output (results/<key>/mask.png ...)
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                found.append(here / f)
    return found


def _read_list(path: Path) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the image list {str(path)!r} ({exc}); pass a text file with one "
                                "image path per line, or a folder") from exc
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        p = Path(s).expanduser()
        out.append(p if p.is_absolute() else path.parent / p)
    return out


def collect_inputs(inputs: "str | os.PathLike | Iterable[str | os.PathLike]", *,
                   exclude: str | os.PathLike | None = None) -> list[InputItem]:
    """The images of a folder (recursive), a list of paths, or a text file of paths, with their keys.

    Args:
        inputs: a folder (searched recursively for :data:`IMAGE_EXTENSIONS`, hidden files and
            folders skipped, sorted by key), one image file, a text file with one image path per
            line (``#`` comments and blank lines ignored; relative paths are relative to the text
            file's folder), or a list/tuple of image paths.
        exclude: a folder never searched (the output folder, when it lies inside the input).

    Returns:
        :class:`InputItem` list, deterministic for the same inputs. Listed files that do not
        exist are kept (they are recorded as failed, so a typo in one line does not stop a run).

    Raises:
        fitem.errors.InvalidInputError: the input does not exist, or holds no image.

    Example:
        >>> items = collect_inputs("celeba/")          # doctest: +SKIP
        >>> items[0].key, items[0].path                 # doctest: +SKIP
        ('000001', '/data/celeba/000001.jpg')
    """
    excl = Path(exclude).resolve() if exclude is not None else None
    if isinstance(inputs, (str, os.PathLike)):
        src = Path(inputs).expanduser()
        if not src.exists():
            raise InvalidInputError(f"input {str(src)!r} does not exist; pass a folder of images, an image list "
                                    "(text file, one path per line) or image paths")
        if src.is_dir():
            root = src.resolve()
            paths = _walk_folder(root, excl)
            items = []
            for p in paths:
                rel = p.relative_to(root)
                items.append((rel.with_suffix("").as_posix(), p))
            items.sort(key=lambda kp: (kp[0], kp[1].suffix.lower()))
            used: set[str] = set()
            result = []
            for key, p in items:
                k = _unique(key, used)
                used.add(k)
                result.append(InputItem(k, str(p), _sidecar(p)))
            if not result:
                raise InvalidInputError(f"no images found in {str(src)!r} (searched recursively for "
                                        f"{', '.join(IMAGE_EXTENSIONS)}); check the folder")
            return result
        if src.suffix.lower() in IMAGE_EXTENSIONS:
            paths_list = [src]
        else:
            paths_list = _read_list(src)
            if not paths_list:
                raise InvalidInputError(f"the image list {str(src)!r} names no images; put one path per line")
        return _from_paths(paths_list)
    try:
        paths_list = [Path(p).expanduser() for p in inputs]
    except TypeError as exc:
        raise InvalidInputError(f"inputs must be a folder, a list file or a list of paths, got "
                                f"{type(inputs).__name__}") from exc
    if not paths_list:
        raise InvalidInputError("no input images given; pass a folder, an image list or image paths")
    return _from_paths(paths_list)


def _from_paths(paths: list[Path]) -> list[InputItem]:
    used: set[str] = set()
    seen: set[str] = set()
    out = []
    for p in paths:
        ap = str(p.resolve())
        if ap in seen:
            continue  # the same file listed twice is annotated once
        seen.add(ap)
        k = _unique(p.stem, used)
        used.add(k)
        out.append(InputItem(k, ap, _sidecar(Path(ap))))
    return out
