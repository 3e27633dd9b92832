"""Loaders for the original autoencoder data files of sec. 3 (Hinton & Salakhutdinov 2006).

The files and their layouts are those used by Martens' (2010) HF code, as recorded in
``reference/task-definitions.md`` ("Data files used by the original code"):

- ``digs3pts_1.mat``: Curves, ``bdata`` (train, 20000 x 784) and ``bdatatest``, one case per row.
- ``mnist_all.mat``: ``train0``..``train9``, ``test0``..``test9``, N x 784 uint8 (divide by 255),
  or the four IDX files of the MNIST distribution (raw or .gz).
- ``newfaces_rot_single.mat``: ``newfaces_single``, 625 x 165600, one case per column; train =
  columns 1..103500, test = the last 41400 (the 20700 columns between are used by neither).

Every loader returns ``Split(train, test)``: float32 arrays, one case per row. Faces values are
kept as stored, since the paper trains Faces with linear outputs and squared error on real values.

Nothing here downloads on its own: ``fetch`` does, when asked, and the loaders only read files.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from trainables.data.curves_replica import make_curves

DEFAULT_DATA_DIR = "data"
DOWNLOAD_TIMEOUT_S = 30.0


class Split(NamedTuple):
    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class KnownFile:
    """A data file the project knows: where to get it and, if published, its digest.

    ``md5``/``sha256`` are None where no digest has been published; the file is then accepted
    unchecked unless the caller passes ``expected_checksum``.
    """

    name: str
    url: str
    md5: str | None = None
    sha256: str | None = None


_MNIST_IDX_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
KNOWN_FILES: dict[str, KnownFile] = {
    f.name: f
    for f in [
        # No checksum has been published for the authors' .mat files.
        KnownFile("digs3pts_1.mat", "http://www.cs.toronto.edu/~jmartens/digs3pts_1.mat"),
        KnownFile("mnist_all.mat", "https://cs.nyu.edu/~roweis/data/mnist_all.mat"),
        KnownFile(
            "newfaces_rot_single.mat", "http://www.cs.toronto.edu/~jmartens/newfaces_rot_single.mat"
        ),
        # The well-known md5s of the MNIST distribution's gzipped IDX files (also listed by
        # torchvision's MNIST dataset). yann.lecun.com now refuses most downloads; the URL is a
        # public mirror of the same files.
        KnownFile(
            "train-images-idx3-ubyte.gz",
            _MNIST_IDX_URL + "train-images-idx3-ubyte.gz",
            md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        KnownFile(
            "train-labels-idx1-ubyte.gz",
            _MNIST_IDX_URL + "train-labels-idx1-ubyte.gz",
            md5="d53e105ee54ea40749a09fcbcd1e9432",
        ),
        KnownFile(
            "t10k-images-idx3-ubyte.gz",
            _MNIST_IDX_URL + "t10k-images-idx3-ubyte.gz",
            md5="9fb629c4189551a2d022fa330f9573f3",
        ),
        KnownFile(
            "t10k-labels-idx1-ubyte.gz",
            _MNIST_IDX_URL + "t10k-labels-idx1-ubyte.gz",
            md5="ec29112dd5afa0611ce80d1b7f02629c",
        ),
    ]
}

# Which file(s) each autoencoder task reads (the first one found wins for MNIST).
TASK_FILES = {
    "curves": "digs3pts_1.mat",
    "mnist": "mnist_all.mat",
    "faces": "newfaces_rot_single.mat",
}

FACES_TRAIN_CASES = 103_500
FACES_TEST_CASES = 41_400


class DataFileNotFoundError(FileNotFoundError):
    """A data file is missing; the message names it, the directory searched and where to get it."""

    def __init__(self, name: str, directory: str | os.PathLike[str], url: str | None = None) -> None:
        self.name = name
        self.directory = str(directory)
        self.url = url or (KNOWN_FILES[name].url if name in KNOWN_FILES else None)
        where = f"download it from {self.url}" if self.url else "no download address is known"
        super().__init__(
            f"data file {name!r} not found in directory {self.directory!r}; {where} into that "
            f"directory, or call trainables.data.autoencoder_files.fetch({name!r}, "
            f"{self.directory!r})"
        )

    def __reduce__(self):
        # Ray sends a trial's exception to the driver by pickling it; the default rebuilds it from
        # ``args`` (the message alone), which this __init__ cannot take.
        return (type(self), (self.name, self.directory, self.url))


class ChecksumError(ValueError):
    """A file's digest differs from the expected one."""

    def __init__(self, name: str, source: str, algorithm: str, expected: str, actual: str) -> None:
        self.name, self.source = name, source
        self.algorithm, self.expected, self.actual = algorithm, expected, actual
        super().__init__(
            f"checksum mismatch for {name!r} ({source}): expected {algorithm} {expected}, "
            f"got {actual}"
        )

    def __reduce__(self):
        return (type(self), (self.name, self.source, self.algorithm, self.expected, self.actual))


class DownloadError(OSError):
    """A download failed; the message names the file and the URL."""


class NoReplicaError(ValueError):
    """A task has no procedural replica; its original file is needed."""


def file_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expected_digest(name: str, expected_checksum: str | None) -> tuple[str, str] | None:
    """(algorithm, hex digest) to check ``name`` against, or None if nothing is known.

    ``expected_checksum`` may be ``"md5:<hex>"``, ``"sha256:<hex>"`` or a bare hex digest, whose
    length tells md5 (32) from sha256 (64).
    """
    if expected_checksum:
        algorithm, _, digest = expected_checksum.rpartition(":")
        if not algorithm:
            algorithm = {32: "md5", 64: "sha256"}.get(len(digest), "")
        if algorithm not in ("md5", "sha256"):
            raise ValueError(
                f"Invalid expected checksum: {expected_checksum!r} (use 'md5:<hex>', "
                f"'sha256:<hex>' or a bare 32- or 64-digit hex digest)"
            )
        return algorithm, digest.lower()
    known = KNOWN_FILES.get(name)
    if known and known.sha256:
        return "sha256", known.sha256
    if known and known.md5:
        return "md5", known.md5
    return None


def verify_checksum(
    path: str | os.PathLike[str],
    expected_checksum: str | None = None,
    name: str | None = None,
    source: str | None = None,
) -> None:
    """Raise ChecksumError if the file differs from ``expected_checksum`` or the registry's digest.

    ``name`` is the data file's name (default: the file's own), ``source`` where it came from, for
    the message. Files with no published digest and no ``expected_checksum`` pass unchecked.
    """
    name = name or Path(path).name
    expected = _expected_digest(name, expected_checksum)
    if expected is None:
        return
    algorithm, digest = expected
    actual = file_digest(path, algorithm)
    if actual != digest:
        raise ChecksumError(name, source or str(path), algorithm, digest, actual)


def fetch(
    name: str,
    data_dir: str | os.PathLike[str],
    url: str | None = None,
    expected_checksum: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download ``name`` into ``data_dir`` unless it is there already; return its path.

    The URL defaults to the registry's. The download goes to a temporary file in ``data_dir`` that
    is checked and then renamed into place, so an interrupted download or a checksum mismatch
    leaves no partial file under the final name.
    """
    directory = Path(data_dir)
    target = directory / name
    if target.exists():
        verify_checksum(target, expected_checksum, name)
        return target
    if url is None:
        if name not in KNOWN_FILES:
            raise ValueError(f"Unknown data file {name!r}: pass url=...; known: {sorted(KNOWN_FILES)}")
        url = KNOWN_FILES[name].url
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
    try:
        try:
            with os.fdopen(fd, "wb") as tmp, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp)
                promised = response.headers.get("Content-Length")
                received = tmp.tell()
            # http.client returns a short body without complaint when the server hangs up early.
            if promised is not None and received != int(promised):
                raise DownloadError(
                    f"downloading {name!r} from {url} failed: received {received} of {promised} bytes"
                )
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, DownloadError):
                raise
            # URLError/HTTPError, timeouts and resets are OSErrors.
            raise DownloadError(f"downloading {name!r} from {url} failed: {exc}") from exc
        verify_checksum(tmp_name, expected_checksum, name, source=f"downloaded from {url}")
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def _require(path: Path, expected_checksum: str | None) -> Path:
    if not path.is_file():
        raise DataFileNotFoundError(path.name, path.parent)
    verify_checksum(path, expected_checksum)
    return path


def _loadmat(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        data = loadmat(path, variable_names=names)
    except NotImplementedError as exc:
        # MATLAB v7.3 files are HDF5, which scipy cannot read.
        raise ValueError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy.io cannot read; re-save it in "
            f"MATLAB with save(..., '-v7') or convert it with h5py"
        ) from exc
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"{path} lacks the variable(s) {missing}; expected {names}")
    return data


def load_curves(path: str | os.PathLike[str], expected_checksum: str | None = None) -> Split:
    """The original Curves data, ``digs3pts_1.mat``: (20000, 784) train and the test set, [0, 1]."""
    data = _loadmat(_require(Path(path), expected_checksum), ["bdata", "bdatatest"])
    return Split(data["bdata"].astype(np.float32), data["bdatatest"].astype(np.float32))


MNIST_IDX_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX file (the MNIST distribution's format), raw or gzipped, as an array of its shape.

    Header: two zero bytes, a type code, the number of dimensions, then each dimension as a
    big-endian uint32; the data follow, big-endian, row-major.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(shape))
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header says shape {shape} ({count * dtype.itemsize} bytes of data) but the "
            f"file holds {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(path_or_dir: str | os.PathLike[str], expected_checksum: str | None = None) -> Split:
    """MNIST images, (60000, 784) train and (10000, 784) test, float32 in [0, 1].

    ``path_or_dir`` is ``mnist_all.mat`` or a directory holding it or the IDX image files
    (``train-images-idx3-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``). From the .mat file the
    training cases come in digit order (train0 first), as stored; from IDX in the file's order.
    Gzipped IDX files are checked against their published md5s. ``expected_checksum`` applies to
    a .mat file only.
    """
    path = Path(path_or_dir)
    # A missing path that is not a .mat file was meant as a directory: report mnist_all.mat there.
    if path.is_dir() or (not path.exists() and path.suffix != ".mat"):
        if (path / "mnist_all.mat").is_file():
            path = path / "mnist_all.mat"
        else:
            found = {split: _find_idx(path, stem) for split, stem in MNIST_IDX_FILES.items()}
            if all(found.values()):
                return Split(*(_idx_images(found[s]) for s in ("train", "test")))
            idx_names = " and ".join(f"{stem}.gz" for stem in MNIST_IDX_FILES.values())
            alternatives = f" (or the IDX files {idx_names} from {_MNIST_IDX_URL})"
            raise DataFileNotFoundError(
                "mnist_all.mat", path, KNOWN_FILES["mnist_all.mat"].url + alternatives
            )
    names = [f"{s}{d}" for s in ("train", "test") for d in range(10)]
    data = _loadmat(_require(path, expected_checksum), names)
    train = np.concatenate([data[f"train{d}"] for d in range(10)])
    test = np.concatenate([data[f"test{d}"] for d in range(10)])
    return Split(_bytes_to_unit(train), _bytes_to_unit(test))


def _idx_images(path: Path) -> np.ndarray:
    verify_checksum(path)
    images = read_idx(path)
    return _bytes_to_unit(images.reshape(len(images), -1))


def _bytes_to_unit(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32)


def load_faces(path: str | os.PathLike[str], expected_checksum: str | None = None) -> Split:
    """The Faces data, ``newfaces_rot_single.mat``: (103500, 625) train, (41400, 625) test.

    The file stores one case per column; columns 1..103500 are the training set and the last
    41400 the test set. Values are kept as stored (real-valued; the paper's Faces autoencoder has
    linear outputs).
    """
    data = _loadmat(_require(Path(path), expected_checksum), ["newfaces_single"])["newfaces_single"]
    if data.shape[1] < FACES_TRAIN_CASES + FACES_TEST_CASES:
        raise ValueError(
            f"{path}: newfaces_single has shape {data.shape}; expected 625 rows and at least "
            f"{FACES_TRAIN_CASES + FACES_TEST_CASES} columns (one case per column)"
        )
    return Split(
        np.ascontiguousarray(data[:, :FACES_TRAIN_CASES].T, dtype=np.float32),
        np.ascontiguousarray(data[:, -FACES_TEST_CASES:].T, dtype=np.float32),
    )


def load_autoencoder_data(
    task: str,
    dataset: Literal["replica", "original"] = "replica",
    data_dir: str | os.PathLike[str] | None = None,
    train_cases: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The training cases of an autoencoder task, one per row, float32.

    ``dataset="replica"``: Curves only, ``make_curves(train_cases or 20000, seed)``.
    ``dataset="original"``: the task's file in ``data_dir`` (default ``./data``); the training
    cases are put in an order drawn from ``seed`` and the first ``train_cases`` kept, so that any
    prefix (``train_cases``, or the first ``eval_cases`` a trainer scores) is a random subset
    rather than, say, MNIST's zeros only.
    """
    if task not in TASK_FILES:
        raise ValueError(f"Unknown autoencoder task {task!r}; expected one of {sorted(TASK_FILES)}")
    if train_cases is not None and train_cases < 1:
        raise ValueError(f"Invalid train_cases: {train_cases} (must be >= 1)")
    if dataset == "replica":
        if task != "curves":
            name = TASK_FILES[task]
            raise NoReplicaError(
                f"no replica of the {task} data exists; dataset='original' with {name!r} in "
                f"data_dir is needed (download: {KNOWN_FILES[name].url})"
            )
        return make_curves(train_cases or 20_000, seed)
    if dataset != "original":
        raise ValueError(f"Invalid dataset: {dataset!r} (expected 'replica' or 'original')")

    directory = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR)
    if task == "mnist":
        train = load_mnist(directory).train
    else:
        loader = load_curves if task == "curves" else load_faces
        train = loader(directory / TASK_FILES[task]).train
    if train_cases is not None and train_cases > len(train):
        raise ValueError(f"train_cases={train_cases} exceeds the {len(train)} training cases of {task}")
    order = np.random.default_rng(seed).permutation(len(train))[:train_cases]
    return np.ascontiguousarray(train[order])
