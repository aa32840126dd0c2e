"""MNIST and Fashion-MNIST as sequences, read by torchvision's own IDX readers.

`mnist-rows` / `fashion-rows` read each image as 28 steps × 28 (the seed notebook's framing),
`*-pixels` as 784 steps × 1, `*-permuted` as 784 steps × 1 in one fixed pixel permutation
(`perm_seed`). Pixels are scaled to [0, 1]. Validation is carved from the 60,000 training
images (`val_size`, `split_seed`); the 10,000 test images are the test split.

The four IDX files (`train-images-idx3-ubyte`, …, each plain or `.gz`) are looked for in a data
root: `task.data_dir` (the CLI's `--data-dir`), else `$HARNESS_DATA`, else `<cache>/data`;
inside it in `MNIST/raw/` or `FashionMNIST/raw/` (torchvision's layout), then `mnist/` or
`fashion-mnist/`, and, for a root named explicitly by `data_dir`, the root itself.
Fashion-MNIST is also found where Debian's `dataset-fashion-mnist` installs it
(/usr/share/datasets/fashion-mnist). Where none has them and `download` is on (the default),
torchvision downloads them into `<root>/MNIST/raw/`. The images read are cached as one uint8
tensor file, keyed by the files' paths, sizes and modification times, so later loads skip
decompression and parsing.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import socket
import tempfile
import zlib
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.tasks import Task, positive_int, register_task, split_train_val
from harness.tasks.mnist1d import cache_dir

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
# dataset → (title, torchvision class, plain folder name, system folders)
SOURCES = {
    "mnist": ("MNIST", "MNIST", "mnist", ()),
    "fashion": ("Fashion-MNIST", "FashionMNIST", "fashion-mnist", (DEBIAN_FASHION,)),
}
DOWNLOAD_TIMEOUT_S = 30.0
SIDE = 28


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """`data_dir`, else `$HARNESS_DATA`, else `<cache>/data`."""
    root = data_dir or os.environ.get("HARNESS_DATA") or cache_dir() / "data"
    return Path(root).expanduser()


def search_dirs(dataset: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for `dataset`'s IDX files, in order."""
    _, tv_class, folder, system = SOURCES[dataset]
    root = data_root(data_dir)
    dirs = [root / tv_class / "raw", root / folder]
    if data_dir:  # a folder the user named may hold the files themselves
        dirs.append(root)
    return dirs + list(system)


def _present(d: Path) -> dict[str, Path]:
    found = {}
    for name in FILES:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
    return found


def find_files(dirs: list[Path]) -> tuple[dict[str, Path] | None, tuple[Path, list[str]] | None]:
    """The four files from the first folder holding all of them; else None and the folder
    holding most of them (with what it lacks), if any holds one."""
    partial = None
    for d in dirs:
        found = _present(d)
        if len(found) == len(FILES):
            return found, None
        if found and (partial is None or len(found) > len(FILES) - len(partial[1])):
            partial = (d, [n for n in FILES if n not in found])
    return None, partial


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    # torchvision opens URLs without a timeout: where packets are dropped rather than refused,
    # a download would hang forever instead of failing with the message below.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if old is None else old)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def fetch(dataset: str, root: Path) -> str | None:
    """torchvision's download into `<root>/<class>/raw`; None on success, else why it failed."""
    import torchvision.datasets as tvd

    tv_class = SOURCES[dataset][1]
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            getattr(tvd, tv_class)(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - any failure becomes the "not found" message
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # torchvision's message: "Error downloading X:\nTried <mirror>, got:\n<reason>…"
        reasons = [lines[i + 1] for i, ln in enumerate(lines[:-1]) if ln.endswith("got:")]
        return (reasons[0] if reasons else lines[0] if lines else type(e).__name__)[:200]
    return None


def _read(path: Path, images: bool) -> torch.Tensor:
    """One IDX file through torchvision's reader (gzip'd ones decompressed to a temp file)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    reader = read_image_file if images else read_label_file
    try:
        if path.suffix != ".gz":
            data = reader(str(path))
        else:
            cache_dir().mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp, gzip.open(path) as src:
                plain = Path(tmp) / path.stem
                with open(plain, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                data = reader(str(plain))
    except (AssertionError, RuntimeError, ValueError, TypeError, KeyError, IndexError, EOFError, zlib.error,
            OSError) as e:  # OSError: unreadable, or a broken gzip stream (gzip.BadGzipFile)
        raise HarnessError(_corrupt(path, str(e).splitlines()[0] if str(e) else type(e).__name__)) from None
    if images and tuple(data.shape[1:]) != (SIDE, SIDE):
        raise HarnessError(_corrupt(path, f"images are {tuple(data.shape[1:])}, not 28×28"))
    if not images and len(data) and not 0 <= int(data.min()) <= int(data.max()) <= 9:
        raise HarnessError(_corrupt(path, "labels outside 0..9"))
    return data


def _corrupt(path: Path, reason: str) -> str:
    return (f"task.data_dir: {path} is not a readable IDX file ({reason}); replace it with an intact copy "
            f"(delete it and download again, or reinstall the package that installed it)")


def _cache_key(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for name in FILES:
        st = files[name].stat()
        h.update(f"{files[name].resolve()}|{st.st_size}|{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def load_idx(dataset: str, data_dir: str | os.PathLike | None = None, download_missing: bool = True) -> dict[str, torch.Tensor]:
    """`dataset`'s images (uint8, N × 28 × 28) and labels (int64): keys x, y, x_test, y_test."""
    tv_class = SOURCES[dataset][1]
    dirs = search_dirs(dataset, data_dir)
    files, partial = find_files(dirs)
    failure = None
    if files is None and download_missing:
        failure = fetch(dataset, data_root(data_dir))
        files, partial = find_files(dirs)
    if files is None:
        raise HarnessError(_missing(dataset, dirs, partial, download_missing, failure))
    path = cache_dir() / "idx" / f"{tv_class}-{_cache_key(files)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    arrays = {
        "x": _read(files[FILES[0]], True), "y": _read(files[FILES[1]], False),
        "x_test": _read(files[FILES[2]], True), "y_test": _read(files[FILES[3]], False),
    }
    for (x, y), (images, labels) in zip((("x", "y"), ("x_test", "y_test")), (FILES[:2], FILES[2:]), strict=True):
        if len(arrays[x]) != len(arrays[y]) or not len(arrays[x]):
            raise HarnessError(f"task.data_dir: {files[images]} and {files[labels]} do not match ({len(arrays[x])} images, "
                               f"{len(arrays[y])} labels); replace them with intact copies of one download")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(arrays, tmp)
    tmp.replace(path)  # atomic: concurrent workers never read a half-written cache
    return arrays


def _missing(dataset: str, dirs: list[Path], partial, download_on: bool, failure: str | None) -> str:
    title = SOURCES[dataset][0]
    msg = f"task.data_dir: {title} IDX files not found: need {', '.join(FILES)} (plain or .gz) in one folder; looked in {', '.join(map(str, dirs))}"
    if partial:
        msg += f" ({partial[0]} lacks {', '.join(partial[1])})"
    msg += f"; download failed: {failure or 'the files were not there afterwards'}" if download_on else "; download is off (task.download=false)"
    msg += ("; to get them: run once where the network allows (task.download=true, the default), or copy the files "
            "into a folder and pass --data-dir DIR (task.data_dir, or set HARNESS_DATA)")
    if dataset == "fashion":
        msg += "; on Debian/Ubuntu: apt-get install dataset-fashion-mnist"
    return msg


def _mnist_task(name: str, dataset: str, framing: str, *, data_dir, download: bool, val_size, split_seed: int,
                perm_seed: int = 0) -> Task:
    if not isinstance(download, bool):
        raise HarnessError(f"task.download: must be true or false, got {download!r}")
    positive_int("perm_seed", perm_seed, 0)
    a = load_idx(dataset, data_dir, download)
    x_train, y_train, x_val, y_val = split_train_val(a["x"], a["y"], val_size=val_size, seed=split_seed)
    perm = torch.randperm(SIDE * SIDE, generator=torch.Generator().manual_seed(perm_seed))

    def frame(x: torch.Tensor) -> torch.Tensor:  # uint8 images → float steps; split first, it is 4× smaller
        x = x.float().div_(255.0)
        if framing == "rows":
            return x
        x = x.reshape(len(x), SIDE * SIDE)
        return (x[:, perm] if framing == "permuted" else x).unsqueeze(-1)

    rows = framing == "rows"
    return Task(
        name=name, io="many-to-one",
        x_train=frame(x_train), y_train=y_train, x_val=frame(x_val), y_val=y_val,
        x_test=frame(a["x_test"]), y_test=a["y_test"],
        input_size=SIDE if rows else 1, output_size=10, seq_len=SIDE if rows else SIDE * SIDE,
    )


@register_task
def mnist_rows(data_dir: str | None = None, download: bool = True, val_size: float | int = 0.1, split_seed: int = 0) -> Task:
    """MNIST rows, many-to-one: 28 steps × 28 → 10 classes."""
    return _mnist_task("mnist-rows", "mnist", "rows", data_dir=data_dir, download=download, val_size=val_size, split_seed=split_seed)


@register_task
def mnist_pixels(data_dir: str | None = None, download: bool = True, val_size: float | int = 0.1, split_seed: int = 0) -> Task:
    """MNIST pixel by pixel, many-to-one: 784 steps × 1 → 10 classes."""
    return _mnist_task("mnist-pixels", "mnist", "pixels", data_dir=data_dir, download=download, val_size=val_size, split_seed=split_seed)


@register_task
def mnist_permuted(
    data_dir: str | None = None, download: bool = True, val_size: float | int = 0.1, split_seed: int = 0, perm_seed: int = 0
) -> Task:
    """Permuted MNIST, many-to-one: 784 steps × 1 (one fixed pixel permutation) → 10 classes."""
    return _mnist_task("mnist-permuted", "mnist", "permuted", data_dir=data_dir, download=download, val_size=val_size,
                       split_seed=split_seed, perm_seed=perm_seed)


@register_task
def fashion_rows(data_dir: str | None = None, download: bool = True, val_size: float | int = 0.1, split_seed: int = 0) -> Task:
    """Fashion-MNIST rows, many-to-one: 28 steps × 28 → 10 classes."""
    return _mnist_task("fashion-rows", "fashion", "rows", data_dir=data_dir, download=download, val_size=val_size, split_seed=split_seed)


@register_task
def fashion_pixels(data_dir: str | None = None, download: bool = True, val_size: float | int = 0.1, split_seed: int = 0) -> Task:
    """Fashion-MNIST pixel by pixel, many-to-one: 784 steps × 1 → 10 classes."""
    return _mnist_task("fashion-pixels", "fashion", "pixels", data_dir=data_dir, download=download, val_size=val_size, split_seed=split_seed)


@register_task
def fashion_permuted(
    data_dir: str | None = None, download: bool = True, val_size: float | int = 0.1, split_seed: int = 0, perm_seed: int = 0
) -> Task:
    """Permuted Fashion-MNIST, many-to-one: 784 steps × 1 (one fixed pixel permutation) → 10 classes."""
    return _mnist_task("fashion-permuted", "fashion", "permuted", data_dir=data_dir, download=download, val_size=val_size,
                       split_seed=split_seed, perm_seed=perm_seed)
