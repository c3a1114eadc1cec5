"""Find images and their labels on disk.

Two layouts are understood:

* image-folder trees ``<root>/<split>/<class>/<image>`` (splits ``train``, ``val``, ``test``;
  extensions jpg, jpeg, png, bmp, webp in any case, e.g. ImageNet's ``.JPEG``). The sorted
  folder names are the classes; the label of an image is the position of its folder.
* ImageNet's flat ``<root>/val/ILSVRC2012_val_00000001.JPEG ...`` with the labels in either
  the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (ids 1..1000 in the order of the
  devkit's ``meta.mat``, which is *not* the sorted wnid order) or Kaggle's
  ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first token is the wnid).

Every problem a user can hit raises :class:`alexnet.errors.DataError` naming the path.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from alexnet.errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META_MAT = "meta.mat"
KAGGLE_CSV = "LOC_val_solution.csv"
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)$")


@dataclass
class ImageList:
    """The images of one split: ``paths[i]`` has label ``labels[i]`` (an index into ``classes``)."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    class_names: list[str]
    root: Path | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)


# ---------------------------------------------------------------------------- class names


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 wnids in sorted order (= the standard label order)."""
    text = (Path(__file__).with_name("imagenet_wnids.txt")).read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@lru_cache(maxsize=1)
def _imagenet_names() -> dict[str, str]:
    wnids = imagenet_wnids()
    try:
        from torchvision.models import AlexNet_Weights

        names = list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:  # pragma: no cover - torchvision without the metadata
        return {}
    if len(names) != len(wnids):  # pragma: no cover
        return {}
    return dict(zip(wnids, names))


def class_names_for(classes: list[str]) -> list[str]:
    """Human names: ImageNet wnids get their ILSVRC name, any other folder keeps its name."""
    names = _imagenet_names()
    return [names.get(c, c) for c in classes]


# ---------------------------------------------------------------------------- helpers


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan(folder: Path) -> tuple[list[str], list[str]]:
    """Sorted (sub-folder names, image file names) of ``folder``; hidden entries are ignored."""
    dirs, files = [], []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        dirs.append(entry.name)
                    elif entry.is_file() and _is_image(entry.name):
                        files.append(entry.name)
                except OSError:
                    continue
    except PermissionError:
        raise DataError(folder, "cannot be read (permission denied)") from None
    except NotADirectoryError:
        raise DataError(folder, "is a file, expected a folder") from None
    return sorted(dirs), sorted(files)


def _few(items, n: int = 5) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:n])
    return text + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _check_root(root) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(root, "does not exist")
    if not root.is_dir():
        raise DataError(root, "is a file, expected a folder of images")
    return root


def list_splits(root) -> list[str]:
    """The splits (``train``, ``val``, ``test``, in that order) present as folders under ``root``."""
    root = _check_root(root)
    return [s for s in SPLITS if (root / s).is_dir()]


# ---------------------------------------------------------------------------- image folders


def _image_folder(folder: Path, class_dirs: list[str], classes: list[str] | None) -> ImageList:
    if classes is None:
        classes = list(class_dirs)
        index = {c: i for i, c in enumerate(classes)}
    else:
        classes = list(classes)
        index = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in class_dirs if c not in index]
        if unknown:
            raise DataError(
                folder,
                f"class folder(s) {_few(unknown)} are not among the {len(classes)} classes "
                f"expected here (e.g. {_few(classes, 3)})",
            )
    paths: list[Path] = []
    labels: list[int] = []
    for name in class_dirs:
        sub = folder / name
        _, files = _scan(sub)
        if not files:
            raise DataError(
                sub, f"class folder holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        paths.extend(sub / f for f in files)
        labels.extend([index[name]] * len(files))
    return ImageList(paths, labels, classes, class_names_for(classes), folder)


# ---------------------------------------------------------------------------- flat ImageNet val


def _candidates(root: Path, split: str) -> list[Path]:
    dirs = [root, root / split]
    for d in ("devkit", "ILSVRC2012_devkit_t12"):
        dirs += [root / d, root / d / "data"]
    dirs += [root / "devkit" / "ILSVRC2012_devkit_t12" / "data", root / split / "ILSVRC2012_devkit_t12" / "data"]
    return dirs


def _first_file(dirs, name: str) -> Path | None:
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def read_meta_mat(path: Path) -> list[str]:
    """wnids in ILSVRC2012_ID order (``result[id - 1]``) from the devkit's ``meta.mat``."""
    try:
        import scipy.io
    except ImportError:
        raise DataError(path, "reading the devkit's meta.mat needs scipy (pip install scipy)") from None
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=True)
        synsets = mat["synsets"]
        ids = [int(i) for i in synsets["ILSVRC2012_ID"].ravel()]
        wnids = [str(w).strip() for w in synsets["WNID"].ravel()]
    except Exception as e:  # corrupt file, no 'synsets', missing fields
        raise DataError(path, f"is not the ILSVRC2012 devkit's meta.mat ({type(e).__name__}: {e})") from None
    # The leaf classes carry ids 1..1000; higher synsets (num_children > 0) follow. Keep the ids
    # that form the range 1..K.
    by_id = dict(zip(ids, wnids))
    out = []
    k = 1
    while k in by_id:
        out.append(by_id[k])
        k += 1
    if not out:
        raise DataError(path, "holds no synsets with ILSVRC2012_ID 1, 2, ...")
    return out


def _labels_from_ground_truth(gt: Path, meta: Path, files: list[str]) -> dict[str, str]:
    id_to_wnid = read_meta_mat(meta)
    try:
        lines = [ln.strip() for ln in gt.read_text().splitlines() if ln.strip()]
        ids = [int(ln) for ln in lines]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(gt, f"is not a list of class ids, one per line ({e})") from None
    for i in ids:
        if not 1 <= i <= len(id_to_wnid):
            raise DataError(gt, f"class id {i} is outside 1..{len(id_to_wnid)} of {meta}")
    out = {}
    numbers = [_VAL_NUMBER.search(os.path.splitext(f)[0]) for f in files]
    if all(numbers):  # ILSVRC2012_val_00000001.JPEG is line 1, whatever subset is present
        for f, m in zip(files, numbers):
            n = int(m.group(1))
            if not 1 <= n <= len(ids):
                raise DataError(gt, f"has {len(ids)} lines, no label for image number {n} ({f})")
            out[f] = id_to_wnid[ids[n - 1] - 1]
    elif len(files) == len(ids):  # other names: the i-th image in name order is line i
        out = {f: id_to_wnid[i - 1] for f, i in zip(files, ids)}
    else:
        raise DataError(
            gt, f"has {len(ids)} labels but the folder holds {len(files)} images not named ILSVRC2012_val_<number>"
        )
    return out


def _labels_from_kaggle(path: Path, files: list[str]) -> dict[str, str]:
    table = {}
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise DataError(path, "expected the header 'ImageId,PredictionString' (Kaggle's LOC_val_solution.csv)")
            for row in reader:
                if len(row) >= 2 and row[1].split():
                    table[row[0].strip()] = row[1].split()[0]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"cannot be read as CSV ({e})") from None
    out = {}
    for name in files:
        wnid = table.get(os.path.splitext(name)[0])
        if wnid is None:
            raise DataError(path, f"has no row for image {name}")
        out[name] = wnid
    return out


def _flat_val(root: Path, split: str, folder: Path, files: list[str], classes: list[str] | None) -> ImageList:
    dirs = _candidates(root, split)
    kaggle = _first_file(dirs + [root.parent, root.parent.parent, root.parent.parent.parent], KAGGLE_CSV)
    gt = _first_file(dirs, GROUND_TRUTH)
    if kaggle is not None:
        wnid_of = _labels_from_kaggle(kaggle, files)
    elif gt is not None:
        meta = _first_file(dirs, META_MAT)
        if meta is None:
            raise DataError(
                gt,
                "the ids in this file follow the devkit's meta.mat, which was not found "
                f"(looked in {root}, {folder}, {root}/devkit[/data], {root}/ILSVRC2012_devkit_t12/data)",
            )
        wnid_of = _labels_from_ground_truth(gt, meta, files)
    else:
        raise DataError(
            folder,
            f"holds {len(files)} images but no class folders and no label file: put the images in "
            f"<class>/ folders, or provide {GROUND_TRUTH} + {META_MAT} (ILSVRC2012 devkit) or {KAGGLE_CSV} "
            f"in {root} or {folder}",
        )
    if classes is None:
        train = root / "train"
        train_dirs = _scan(train)[0] if train.is_dir() and split != "train" else []
        classes = list(train_dirs) if train_dirs else list(imagenet_wnids())
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({w for w in wnid_of.values() if w not in index})
    if unknown:
        raise DataError(
            folder, f"labels name class(es) {_few(unknown)} that are not among the {len(classes)} classes expected here"
        )
    paths = [folder / f for f in files]
    labels = [index[wnid_of[f]] for f in files]
    return ImageList(paths, labels, classes, class_names_for(classes), folder)


# ---------------------------------------------------------------------------- public


def find_split(root, split: str, classes: list[str] | None = None) -> ImageList:
    """The images and labels of ``<root>/<split>``.

    ``classes``: map the split onto this class list (e.g. a checkpoint's); the split may hold
    a subset of them, but a class folder not in the list is an error. Without it the classes
    are the split's own sorted folder names (for a flat ImageNet val: train's folders if there
    is a train split, else the 1000 ILSVRC-2012 wnids).
    """
    root = _check_root(root)
    folder = root / split
    if not folder.exists():
        present = list_splits(root)
        hint = f" (present: {', '.join(present)})" if present else " (no train/val/test folders)"
        raise DataError(folder, f"split '{split}' does not exist{hint}")
    class_dirs, files = _scan(folder)
    if class_dirs:
        return _image_folder(folder, class_dirs, classes)
    if files:
        return _flat_val(root, split, folder, files, classes)
    raise DataError(folder, "holds no class folders and no images (expected <split>/<class>/<image>)")


def find_splits(root, splits: list[str] | None = None) -> dict[str, ImageList]:
    """Several splits with one class list: the first split's (train when present).

    Image-folder splits must have exactly the reference's classes; otherwise the error names
    the differing classes.
    """
    root = _check_root(root)
    if splits is None:
        splits = list_splits(root)
        if not splits:
            raise DataError(root, "holds no train, val or test folder (expected <root>/<split>/<class>/<image>)")
    splits = list(splits)
    if len(set(splits)) != len(splits):
        raise DataError(root, f"split names repeat: {splits}")
    order = sorted(splits, key=lambda s: (s != "train", splits.index(s)))
    out: dict[str, ImageList] = {}
    ref_split, classes = None, None
    for s in order:
        if classes is None:
            lst = find_split(root, s)
            ref_split, classes = s, lst.classes
        else:
            folder = root / s
            if folder.is_dir():
                own_dirs = _scan(folder)[0]
                if own_dirs and own_dirs != classes:
                    only_here = [c for c in own_dirs if c not in set(classes)]
                    only_ref = [c for c in classes if c not in set(own_dirs)]
                    parts = []
                    if only_here:
                        parts.append(f"only in {s}: {_few(only_here)}")
                    if only_ref:
                        parts.append(f"only in {ref_split}: {_few(only_ref)}")
                    raise DataError(folder, f"classes differ from {ref_split}'s: " + "; ".join(parts))
            lst = find_split(root, s, classes)
        out[s] = lst
    return {s: out[s] for s in splits}
