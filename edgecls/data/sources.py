"""Where images come from: Keras' CIFAR-10, an image folder, or an archive of one.

A source is listed, not decoded: this module returns, per split, the image ids
(paths relative to the source root), labels and the encoded bytes (archives) or
file paths (folders). Decoding happens once, for the selected images only, in
`edgecls.data.decode`.

Accepted layouts (an archive may wrap either in one top-level folder):

    train/<class>/...   test/<class>/...    (test split given)
    <class>/...                             (test carved out by a seeded fraction)
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from edgecls.errors import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_MEMBER_BYTES = 64 << 20  # one image file in an archive; anything larger is not a photo but a bomb
MAX_ARCHIVE_BYTES = 16 << 30  # all members together, uncompressed (they are held in memory)
SPLIT_NAMES = ("train", "test")
Payload = Literal["bytes", "path", "pixels"]


@dataclass
class RawSplit:
    """The images of one split, not yet decoded.

    Attributes:
        ids: Stable id per image (`train/cat/0001.jpg`, or `train/00017` for arrays).
        labels: Class index per image, int32.
        payload: Encoded bytes, file paths, or an uint8 pixel array [N, H, W, 3].
        kind: Which of the three `payload` is.
    """

    ids: list[str]
    labels: np.ndarray
    payload: list[bytes] | list[str] | np.ndarray
    kind: Payload

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> RawSplit:
        """The images at `index`, in that order."""
        payload = self.payload[index] if self.kind == "pixels" else [self.payload[i] for i in index]
        return RawSplit([self.ids[i] for i in index], self.labels[index], payload, self.kind)


@dataclass
class Source:
    """A listed data source.

    Attributes:
        description: What was read, for metrics and manifests.
        class_names: Sorted class names; index = label.
        train: The training images (validation is carved from these later).
        test: The test images, or None when the source has no test split.
        fingerprint: sha256 of the archive file, or of the folder's listing
            (relative paths and sizes) for folders.
        notes: What listing skipped (pipes, devices, broken links), one line each.
    """

    description: str
    class_names: list[str]
    train: RawSplit
    test: RawSplit | None
    fingerprint: str | None = None
    notes: list[str] = field(default_factory=list)


def list_source(source: str) -> Source:
    """List a data source without decoding any image.

    Args:
        source: `cifar10`, a folder, or a .tar.gz/.tgz/.tar/.zip archive.

    Raises:
        DataError: the path does not exist, is of an unknown kind, holds no
            images, or its train and test class folders differ.
    """
    if source == "cifar10":
        return _list_keras_cifar10()
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source {source} does not exist (pass `cifar10`, a folder or an archive).")
    if path.is_dir():
        files, skipped = _walk_folder(path)
        fingerprint = _listing_digest((rel, os.path.getsize(p) if p else 0) for rel, p in files)
        listed = _from_listing(str(path), files, "path", fingerprint)
        if skipped:
            what = "entries that are not regular files or are broken links"
            listed.notes.append(f"skipped {len(skipped)} {what}, first: {skipped[0]}")
        return listed
    name = path.name.lower()
    if not path.is_file():
        raise DataError(f"data source {source} is neither a folder nor a regular file (a pipe or a device?).")
    if not name.endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"data source {source} is a file but not an archive: use a folder or a {'/'.join(ARCHIVE_SUFFIXES)} file.")
    from edgecls.run import sha256_file

    files = _read_zip(path) if name.endswith(".zip") else _read_tar(path)
    return _from_listing(str(path), files, "bytes", sha256_file(path))


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(rel).parts)


def _walk_folder(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(relative path, path) of the regular files under `root`, and the entries skipped.

    Links to files are followed; links to folders are not (no loops). Pipes, sockets,
    devices, dangling links and link loops are skipped: reading a pipe would hang.
    """
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        if not filenames and not dirnames and rel_dir != ".":
            files.append((rel_dir + "/", ""))  # an empty folder still names a class
        for filename in sorted(filenames):
            rel = f"{rel_dir}/{filename}" if rel_dir != "." else filename
            if _is_hidden(rel):
                continue
            full = os.path.join(dirpath, filename)
            try:
                regular = stat.S_ISREG(os.stat(full).st_mode)
            except OSError:  # a dangling link or a link loop
                regular = False
            if regular:
                files.append((rel, full))
            else:
                skipped.append(rel)
    return files, skipped


class _SizeBudget:
    """Counts the uncompressed bytes read from an archive and stops at the limits, before reading."""

    def __init__(self, path: Path):
        self.path, self.total = path, 0

    def take(self, name: str, size: int) -> None:
        if size > MAX_MEMBER_BYTES:
            raise DataError(
                f"archive {self.path}: member {name} is {size / 2**20:.0f} MiB uncompressed, over the "
                f"{MAX_MEMBER_BYTES >> 20} MiB limit for one image; refusing the archive."
            )
        self.total += size
        if self.total > MAX_ARCHIVE_BYTES:
            raise DataError(
                f"archive {self.path} holds more than {MAX_ARCHIVE_BYTES >> 30} GiB uncompressed; "
                "unpack it and pass the folder (folders are read file by file)."
            )


def _read_tar(path: Path) -> list[tuple[str, bytes]]:
    files, budget = [], _SizeBudget(path)
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if _is_hidden(member.name):
                    continue
                if member.isdir():
                    files.append((member.name.rstrip("/") + "/", b""))
                elif member.isfile():  # links, pipes and devices are never read
                    budget.take(member.name, member.size)
                    files.append((member.name, archive.extractfile(member).read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read archive {path}: {exc}.") from None
    return files


def _read_zip(path: Path) -> list[tuple[str, bytes]]:
    files, budget = [], _SizeBudget(path)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if _is_hidden(info.filename):
                    continue
                if info.is_dir():
                    files.append((info.filename, b""))
                    continue
                budget.take(info.filename, info.file_size)
                with archive.open(info) as member:  # never more than the declared size, whatever the stream holds
                    data = member.read(info.file_size + 1)
                if len(data) != info.file_size:
                    raise DataError(f"archive {path}: member {info.filename} is not the size its header declares.")
                files.append((info.filename, data))
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise DataError(f"cannot read archive {path}: {exc}.") from None
    return files


def _listing_digest(entries) -> str:
    digest = hashlib.sha256()
    for rel, size in entries:
        digest.update(f"{rel}\0{size}\n".encode())
    return digest.hexdigest()


def _strip_wrapper(files: list[tuple[str, object]]) -> list[tuple[tuple[str, ...], object]]:
    """Split paths into parts and drop folders that wrap the whole layout."""
    entries = [(PurePosixPath(rel.rstrip("/")).parts, item, rel.endswith("/")) for rel, item in files]
    entries = [(parts, item, is_dir) for parts, item, is_dir in entries if parts]
    while True:
        files_only = [parts for parts, _, is_dir in entries if not is_dir]
        tops = {parts[0] for parts, _, _ in entries}
        if len(tops) == 1 and files_only and all(len(p) >= 3 for p in files_only) and next(iter(tops)) not in SPLIT_NAMES:
            entries = [(p[1:], item, d) for p, item, d in entries if len(p) > 1]
        else:
            return [(parts, item) for parts, item, is_dir in entries if not is_dir] + [
                (parts + ("",), None) for parts, _, is_dir in entries if is_dir
            ]


def _group_by_class(entries, split: str | None):
    """Map class name -> [(id, item)] for entries under `split` (or the root)."""
    classes: dict[str, list[tuple[str, object]]] = {}
    for parts, item in entries:
        if split is not None:
            if parts[0] != split:
                continue
            parts = parts[1:]
        if len(parts) < 2:
            continue  # a file beside the class folders (README, LICENSE): not an image of a class
        files = classes.setdefault(parts[0], [])
        if item is not None and parts[-1]:
            files.append(("/".join(((split,) if split else ()) + parts), item))
    return classes


def _to_split(classes: dict[str, list], class_names: list[str], kind: Payload) -> RawSplit:
    ids, labels, payload = [], [], []
    for label, name in enumerate(class_names):
        for image_id, item in classes.get(name, []):
            ids.append(image_id)
            labels.append(label)
            payload.append(item)
    return RawSplit(ids, np.asarray(labels, dtype=np.int32), payload, kind)


def _from_listing(where: str, files, kind: Payload, fingerprint: str) -> Source:
    entries = _strip_wrapper(files)
    tops = {parts[0] for parts, _ in entries if len(parts) >= 2}
    if "train" in tops:
        train = _group_by_class(entries, "train")
        test = _group_by_class(entries, "test") if "test" in tops else None
    else:
        train, test = _group_by_class(entries, None), None
    class_names = sorted(train)
    if not class_names or not any(train.values()):
        raise DataError(f"no images found in {where}: expected train/<class>/* and test/<class>/*, or <class>/*.")
    for name in class_names:
        if not train[name]:
            raise DataError(f"class folder `{name}` in {where} has no files.")
    if test is not None:
        missing = sorted(set(class_names) - set(test))
        extra = sorted(set(test) - set(class_names))
        if missing:
            raise DataError(f"class folder `test/{missing[0]}` is missing in {where} (train has it).")
        if extra:
            raise DataError(f"class folder `test/{extra[0]}` in {where} has no counterpart in train.")
        empty = [name for name in class_names if not test[name]]
        if empty:
            raise DataError(f"class folder `test/{empty[0]}` in {where} has no files.")
    if len(class_names) < 2:
        raise DataError(f"{where} has one class folder ({class_names[0]}); a classifier needs two or more.")
    return Source(
        description=where,
        class_names=class_names,
        train=_to_split(train, class_names, kind),
        test=None if test is None else _to_split(test, class_names, kind),
        fingerprint=fingerprint,
    )


CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def _list_keras_cifar10() -> Source:
    """CIFAR-10 through Keras' own loader (downloads and caches under ~/.keras/datasets)."""
    import tf_keras

    try:
        (x_train, y_train), (x_test, y_test) = tf_keras.datasets.cifar10.load_data()
    except Exception as exc:  # Keras raises a bare Exception on a failed download
        raise DataError(
            "could not load CIFAR-10 through Keras (offline?): "
            f"{str(exc).splitlines()[0][:160]}. Pass a local copy with `--data PATH` "
            "(an image folder or a .tar.gz/.zip of train/<class>/*, test/<class>/*)."
        ) from None

    def split(name: str, x: np.ndarray, y: np.ndarray) -> RawSplit:
        ids = [f"{name}/{i:05d}" for i in range(len(x))]
        return RawSplit(ids, y.reshape(-1).astype(np.int32), x, "pixels")

    return Source(
        description="cifar10 (keras.datasets)",
        class_names=list(CIFAR10_CLASSES),
        train=split("train", x_train, y_train),
        test=split("test", x_test, y_test),
        fingerprint=None,
    )
