"""On-disk cache of frozen image features.

One file, longer than the others: reading, validating, extracting and committing an
entry share its locking and record format, which must stay consistent in one place
(the torchrun shard sharing is in :mod:`clap4cl.features.sharding`).

Every image is encoded once per view (train: original and horizontally flipped; test:
original) and stored as an fp16 ``.npy`` file that is later opened memory-mapped. A
file is keyed by everything that changes its content: backbone identity (architecture,
weights, precision), dataset fingerprint, split, view and preprocessing.

Safety:
- writes go to a temporary file that is renamed into place only when complete, and a
  sidecar ``.json`` with the shape and a checksum is written last, so a killed
  extraction never leaves a file that is read as valid;
- a truncated or corrupt file (wrong shape, bad checksum, unreadable) is detected,
  reported with a warning and rebuilt;
- an exclusive file lock serialises extractions of the same entry across processes;
  the second process then finds the finished entry and reuses it;
- an image that cannot be decoded (``BadImageError`` from the dataset) does not stop
  the extraction: its rows stay zero and the completion record lists it
  (:meth:`FeatureCache.skipped`); with ``on_bad_image="error"`` it stops the extraction
  with that error instead.

Under ``torchrun`` the ranks share the encoding of an entry through shard files
(:mod:`clap4cl.features.sharding`); the result is byte-identical to a single-process one.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from tqdm.auto import tqdm

from clap4cl import distributed
from clap4cl.errors import BadImageError
from clap4cl.features.sharding import Shard, get_or_extract_sharded, record_key

FORMAT_VERSION = 1
# Seconds without change after which a dead process's temporary of another entry is removed.
ORPHAN_AGE = 3600
# ``<entry stem>[.shard<i>of<n>].tmp<pid>[.npy]``: the temporaries of data and records
_TEMPORARY = re.compile(r"(?P<stem>[A-Za-z0-9_]+-[A-Za-z0-9_]+-[0-9a-f]{32})"
                        r"(?P<shard>\.shard\d+of\d+)?\.tmp(?P<pid>\d+)(?:\.npy)?")
TRAIN_VIEWS = ("original", "flip")
TEST_VIEWS = ("original",)


@dataclass(frozen=True)
class CacheKey:
    """Everything that determines the content of one cached feature file."""

    backbone: str
    dataset: str
    split: str
    view: str
    preprocessing: str

    def digest(self) -> str:
        payload = json.dumps([FORMAT_VERSION, self.backbone, self.dataset, self.split,
                              self.view, self.preprocessing])
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def as_dict(self) -> dict:
        return {"backbone": self.backbone, "dataset": self.dataset, "split": self.split,
                "view": self.view, "preprocessing": self.preprocessing}


class FeatureCache:
    """A directory of cached features; see the module docstring for the guarantees.

    Attributes:
        extracted_images: number of images encoded by this object (tests use it to
            check that a warm cache never calls the encoder).
    """

    def __init__(self, root):
        self.root = Path(root).expanduser()
        self.extracted_images = 0

    # ---- paths -------------------------------------------------------------------
    def data_path(self, key: CacheKey, shard: Optional[Shard] = None) -> Path:
        """The ``.npy`` file of ``key`` (of one of its shards when ``shard`` is given)."""
        return self.root / "features" / f"{self.stem(key)}{shard.suffix if shard else ''}.npy"

    def meta_path(self, key: CacheKey, shard: Optional[Shard] = None) -> Path:
        """The completion record (``.json``) next to ``data_path(key, shard)``."""
        return self.data_path(key, shard).with_suffix(".json")

    @staticmethod
    def stem(key: CacheKey) -> str:
        """The file name of ``key``'s entry without suffixes (its shards add one)."""
        # The dataset, backbone and preprocessing only enter through the digest; split and
        # view are names in the file name, so they must not be able to leave features/.
        for name in (key.split, key.view):
            if not name.replace("_", "").isalnum():
                raise ValueError(f"cache split/view names are letters, digits and '_', got {name!r}")
        return f"{key.split}-{key.view}-{key.digest()}"

    def locked(self, keys: Iterable[CacheKey]):
        """An exclusive inter-process lock on the entries ``keys`` (the views of one split)."""
        return _exclusive_lock(self.data_path(next(iter(keys))).with_suffix(".lock"))

    # ---- reading -----------------------------------------------------------------
    def load(self, key: CacheKey, expected_rows: Optional[int] = None,
             shard: Optional[Shard] = None, *, discard: bool = False) -> Optional[np.ndarray]:
        """The cached (N, D) fp16 features as a read-only memory map, or None.

        With ``shard``, the rows of that shard of the entry instead. A file that is
        incomplete or fails validation gives None; with ``discard`` (only for a caller
        holding the entry's lock, see :meth:`locked`) it is also removed with a warning.
        Without the lock it may be an entry another process is committing right now.
        """
        data, meta = self.data_path(key, shard), self.meta_path(key, shard)
        if not meta.is_file():
            if discard and data.exists():
                self._discard(key, "it has no completion record (interrupted write)", shard)
            return None
        problem = self._validate(key, expected_rows, shard)
        if problem:
            if discard:
                self._discard(key, problem, shard)
            return None
        return np.load(data, mmap_mode="r")

    def skipped(self, key: CacheKey, shard: Optional[Shard] = None) -> Dict[int, Tuple[str, str]]:
        """The rows of a complete entry whose image could not be decoded:
        {row: (file, reason)} (their features are zero)."""
        try:
            meta = json.loads(self.meta_path(key, shard).read_text())
        except (OSError, ValueError):
            return {}
        return {int(row): (str(path), str(reason))
                for row, path, reason in meta.get("skipped", [])}

    def _validate(self, key: CacheKey, expected_rows: Optional[int],
                  shard: Optional[Shard] = None) -> Optional[str]:
        try:
            meta = json.loads(self.meta_path(key, shard).read_text())
            if meta.get("key") != record_key(key, shard):
                return "its record belongs to another key"
            array = np.load(self.data_path(key, shard), mmap_mode="r")
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            return f"it cannot be read ({type(exc).__name__}: {exc})"
        if list(array.shape) != meta.get("shape") or array.dtype != np.float16:
            return f"its shape {array.shape} does not match the record {meta.get('shape')}"
        if expected_rows is not None and array.shape[0] != expected_rows:
            return f"it has {array.shape[0]} rows but the dataset has {expected_rows}"
        if _checksum(array) != meta.get("checksum"):
            return "its checksum does not match (corrupt file)"
        return None

    def _discard(self, key: CacheKey, reason: str, shard: Optional[Shard] = None) -> None:
        warnings.warn(f"feature cache entry {self.data_path(key, shard).name} is invalid "
                      f"because {reason}; rebuilding it", RuntimeWarning, stacklevel=3)
        for path in (self.meta_path(key, shard), self.data_path(key, shard)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # ---- temporaries ---------------------------------------------------------------
    def remove_orphans(self, keys: Iterable[CacheKey] = ()) -> None:
        """Remove the temporary files that killed writers left in ``features/``.

        Call it holding the lock of ``keys``: their entries' temporaries are orphans
        whatever process wrote them (every writer of an entry holds its lock; the shards
        of torchrun ranks, written without it, excepted). Any other
        temporary goes when its writer's process id is not alive on this host and the file
        has not changed for ORPHAN_AGE seconds (a writer on another host of a shared
        cache keeps its file changing).
        """
        folder = self.root / "features"
        stems = {self.stem(k) for k in keys}
        now = time.time()
        for path in folder.glob("*.tmp*"):
            match = _TEMPORARY.fullmatch(path.name)
            if match is None:
                continue
            mine = match.group("stem") in stems and not match.group("shard")
            with contextlib.suppress(OSError):
                if mine or (not pid_alive(int(match.group("pid")))
                            and now - path.stat().st_mtime > ORPHAN_AGE):
                    path.unlink()

    # ---- writing -----------------------------------------------------------------
    def get_or_extract(self, backbone, dataset: Dataset, *, dataset_id: str, split: str,
                       views: Sequence[str] = TEST_VIEWS, batch_size: int = 128,
                       num_workers: int = 0, progress: bool = True,
                       on_bad_image: str = "skip") -> Dict[str, np.ndarray]:
        """Features of every image of ``dataset`` for each view, extracting what is missing.

        ``dataset`` yields ``(image tensor, label)`` already preprocessed with the
        backbone's test pipeline; the ``flip`` view is the horizontally flipped tensor.
        Under torchrun every rank must call this alike: the ranks share the encoding
        (see the module docstring) and all return the same features; progress is shown
        on rank 0 only. An image the dataset cannot decode (``BadImageError``) leaves
        zero rows listed by :meth:`skipped`, or with ``on_bad_image="error"`` raises.
        """
        keys = {v: self.key(backbone, dataset_id, split, v) for v in views}
        label = f"{dataset_id} {split}"
        if distributed.is_distributed():
            return get_or_extract_sharded(self, backbone, dataset, keys, batch_size, num_workers,
                                          progress and distributed.is_main(), label,
                                          on_bad_image=on_bad_image)
        found = {v: self.load(k, len(dataset)) for v, k in keys.items()}
        if all(a is not None for a in found.values()):
            return found
        self.root.joinpath("features").mkdir(parents=True, exist_ok=True)
        with self.locked(keys.values()):
            self.remove_orphans(keys.values())
            found = {v: self.load(k, len(dataset), discard=True) for v, k in keys.items()}
            todo = [v for v, a in found.items() if a is None]
            if todo:
                self.extract(backbone, dataset, {v: keys[v] for v in todo},
                              batch_size, num_workers, progress, label,
                              on_bad_image=on_bad_image)
                found.update({v: self.load(keys[v], len(dataset)) for v in todo})
        return found

    @staticmethod
    def key(backbone, dataset_id: str, split: str, view: str) -> CacheKey:
        return CacheKey(backbone.identity, dataset_id, split, view, repr(backbone.preprocess_test))

    def extract(self, backbone, dataset, keys: Dict[str, CacheKey], batch_size,
                num_workers, progress, label, shard: Optional[Shard] = None,
                on_bad_image: str = "skip") -> None:
        """Encode ``dataset`` (only ``shard``'s rows when given) into the entries ``keys``."""
        dataset, finish = _split_tensor_steps(dataset)
        dataset = _Tolerant(dataset)
        offset = 0
        if shard is not None:
            # shards start on a batch boundary: the loader yields the single-process batches
            dataset, offset = Subset(dataset, range(shard.start, shard.stop)), shard.start
        n = len(dataset)
        skipped: Dict[int, Tuple[str, str]] = {}
        with self.new_entries(keys, n, backbone.embed_dim, shard, skipped) as arrays:
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                num_workers=num_workers, collate_fn=_collate_decoded)
            bar = tqdm(total=n, desc=f"extract {label}", unit="img", disable=not progress,
                       leave=False)
            for rows, images, bad in loader:
                for row, path, reason in bad:
                    if on_bad_image == "error":
                        raise BadImageError(path, reason)
                    skipped[row] = (path, reason)
                if rows:
                    images = finish(images)
                    at = _rows(rows, offset)
                    for view, array in arrays.items():
                        batch = torch.flip(images, dims=[-1]) if view == "flip" else images
                        array[at] = backbone.encode_images(batch).numpy().astype(np.float16)
                    self.extracted_images += len(rows)
                bar.update(len(rows) + len(bad))
            bar.close()

    @contextlib.contextmanager
    def new_entries(self, keys: Dict[str, CacheKey], n: int, dim: int,
                     shard: Optional[Shard] = None,
                     skipped: Optional[Dict[int, Tuple[str, str]]] = None):
        """Writable (n, dim) fp16 temporary memory maps, one per view of ``keys``, zero-filled.

        Committed when the block completes, removed if it raises; the records list the
        rows in ``skipped`` ({row: (file, reason)}, read when the block completes).
        """
        tmp_paths = {v: self.data_path(k, shard).with_suffix(f".tmp{os.getpid()}.npy")
                     for v, k in keys.items()}
        arrays = {v: np.lib.format.open_memmap(p, mode="w+", dtype=np.float16, shape=(n, dim))
                  for v, p in tmp_paths.items()}
        try:
            yield arrays
            for view, array in arrays.items():
                array.flush()
                self._commit(keys[view], tmp_paths[view], (n, dim), _checksum(array), shard,
                             skipped or {})
        finally:
            arrays.clear()
            for p in tmp_paths.values():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _commit(self, key: CacheKey, tmp: Path, shape, checksum: str,
                shard: Optional[Shard] = None, skipped=None) -> None:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.data_path(key, shard))
        record = {"key": record_key(key, shard), "shape": list(shape), "dtype": "float16",
                  "checksum": checksum, "format": FORMAT_VERSION,
                  "skipped": [[row, *skipped[row]] for row in sorted(skipped or {})]}
        meta_tmp = self.meta_path(key, shard).with_suffix(f".tmp{os.getpid()}")
        meta_tmp.write_text(json.dumps(record, indent=1))
        os.replace(meta_tmp, self.meta_path(key, shard))


class _Tolerant(Dataset):
    """``dataset``'s items as ``(index, image, None)``, or ``(index, None, (file, reason))``
    for an image it cannot decode (plain data: it crosses DataLoader worker processes)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return index, self.dataset[index][0], None
        except BadImageError as exc:
            return index, None, (exc.path, exc.reason)


def _split_tensor_steps(dataset):
    """``(dataset, finish)``: the per-image transform of ``dataset`` without its trailing
    tensor conversion and normalisation, which ``finish`` applies to a whole batch.

    Applies when ``dataset`` has a ``transform`` that is a ``Compose`` ending in
    ``ToTensor`` (or open_clip's ``MaybeToTensor``) and ``Normalize``, and a
    ``with_transform`` (the image datasets of ``scenarios``); otherwise ``dataset`` is
    returned unchanged with an identity ``finish``. Both steps are element-wise, so the
    batch gets exactly the values the per-image steps give (a float division by 255, a
    subtraction and a division per channel); on small images they cost more per call
    than the decoding itself.
    """
    from torchvision.transforms import Compose, Normalize, ToTensor

    steps = getattr(getattr(dataset, "transform", None), "transforms", None)
    if (not hasattr(dataset, "with_transform") or not isinstance(steps, list) or len(steps) < 2
            or not isinstance(steps[-2], ToTensor) or not isinstance(steps[-1], Normalize)):
        return dataset, _identity
    head = Compose(list(steps[:-2]) + [_ToByteTensor(steps[-2])])
    return dataset.with_transform(head), _BatchTail(steps[-1])


def _identity(images):
    return images


class _ToByteTensor:
    """``to_tensor`` stopping before the float conversion: an RGB or grayscale PIL image
    becomes its uint8 (C, H, W) tensor; anything else goes through ``to_tensor``."""

    def __init__(self, to_tensor):
        self.to_tensor = to_tensor

    def __call__(self, pic):
        from PIL import Image

        if isinstance(pic, Image.Image) and pic.mode in ("RGB", "L"):
            array = np.asarray(pic, dtype=np.uint8)
            array = array[:, :, None] if array.ndim == 2 else array
            return torch.from_numpy(array.transpose(2, 0, 1).copy())
        return self.to_tensor(pic)


class _BatchTail:
    """The float conversion of ``to_tensor`` and ``normalize`` on a collated batch."""

    def __init__(self, normalize):
        self.normalize = normalize

    def __call__(self, images):
        if images.dtype == torch.uint8:
            images = images.to(dtype=torch.get_default_dtype()).div(255)
        return self.normalize(images)


def _rows(rows, offset):
    """The memory-map index of a batch's rows: a slice when they are consecutive."""
    first, last = rows[0] - offset, rows[-1] - offset
    if last - first + 1 == len(rows):
        return slice(first, last + 1)
    return np.asarray(rows) - offset


def _collate_decoded(items):
    """(indices of the decoded images, their batch or None, [(index, file, reason)] of the rest)."""
    good = [(i, image) for i, image, _ in items if image is not None]
    if len({image.dtype for _, image in good}) > 1:  # uint8 next to float: the float values
        good = [(i, image.to(dtype=torch.get_default_dtype()).div(255)
                 if image.dtype == torch.uint8 else image) for i, image in good]
    images = default_collate([image for _, image in good]) if good else None
    return [i for i, _ in good], images, [(i, *bad) for i, image, bad in items if image is None]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _checksum(array: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    # reshape of a C-contiguous memory map is a view: the file is read in chunks
    flat = np.asarray(array).reshape(-1).view(np.uint8)
    step = 1 << 24
    for start in range(0, flat.size, step):
        digest.update(flat[start:start + step])
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
