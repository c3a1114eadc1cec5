"""Finding images and labels: image-folder trees, ImageNet's flat val (devkit or Kaggle), errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import random_image, write_image

from alexnet.data.layouts import (
    ImageList,
    class_names_for,
    find_split,
    find_splits,
    imagenet_wnids,
    list_splits,
    read_meta_mat,
)
from alexnet.errors import DataError


def _img(path: Path) -> Path:
    return write_image(path, random_image(np.random.default_rng(len(str(path))), 8, 10), fmt="JPEG")


# ---------------------------------------------------------------------------- image folders


def test_image_folder(image_tree):
    lst = find_split(image_tree, "train")
    assert isinstance(lst, ImageList)
    assert lst.classes == ["cat", "dog", "n01440764"]
    assert lst.class_names == ["cat", "dog", "tench"]  # wnid folders get their ILSVRC name
    assert len(lst) == 12 and lst.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert [p.name for p in lst.paths[:4]] == ["img0.JPEG", "img1.png", "img2.JPEG", "img3.png"]
    assert all(p.parent.name == lst.classes[y] for p, y in zip(lst.paths, lst.labels))
    assert list_splits(image_tree) == ["train", "val"]


def test_extensions_case_insensitive_and_other_files_ignored(tmp_path):
    root = tmp_path / "d"
    for name in ("a.JPG", "b.jpeg", "c.PNG", "d.bmp", "e.WebP"):
        write_image(root / "train" / "x" / name, np.zeros((4, 4, 3), np.uint8),
                    fmt={"JPG": "JPEG", "jpeg": "JPEG", "PNG": "PNG", "bmp": "BMP", "WebP": "WEBP"}[name.split(".")[1]])
    (root / "train" / "x" / "notes.txt").write_text("not an image")
    (root / "train" / "x" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "x" / "._a.JPG").write_bytes(b"\0")  # macOS resource fork
    (root / "train" / ".hidden").mkdir()
    lst = find_split(root, "train")
    assert lst.classes == ["x"]
    assert [p.name for p in lst.paths] == ["a.JPG", "b.jpeg", "c.PNG", "d.bmp", "e.WebP"]


def test_class_names():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    assert class_names_for(["n01440764", "n15075141", "airplane"]) == ["tench", "toilet tissue", "airplane"]


# ---------------------------------------------------------------------------- mapping onto a class list


def test_subset_mapping(image_tree):
    classes = ["ant", "cat", "dog", "n01440764", "zebra"]
    lst = find_split(image_tree, "val", classes=classes)
    assert lst.classes == classes
    assert lst.labels == [1, 1, 2, 2, 3, 3]
    assert lst.class_names[3] == "tench"


def test_subset_mapping_unknown_folder(image_tree):
    with pytest.raises(DataError) as e:
        find_split(image_tree, "val", classes=["cat", "dog"])
    assert "n01440764" in str(e.value) and str(image_tree / "val") in str(e.value)


# ---------------------------------------------------------------------------- flat ImageNet val

# meta.mat order (ILSVRC2012_ID 1, 2, 3) differs from sorted wnid order.
META_ORDER = ["n03000003", "n01000001", "n02000002"]


def _fake_devkit(folder: Path, extra_internal: bool = True) -> None:
    import scipy.io

    rows = [(i + 1, w, f"words {w}", 0) for i, w in enumerate(META_ORDER)]
    if extra_internal:
        rows.append((4, "n09999999", "an internal synset", 3))
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    syn = np.array(rows, dtype=dt)
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(folder / "meta.mat", {"synsets": syn})


def _flat_val(root: Path, n: int = 4, first: int = 1) -> list[str]:
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(first, first + n)]
    for name in names:
        _img(root / "val" / name)
    return names


def test_read_meta_mat(tmp_path):
    _fake_devkit(tmp_path / "dk")
    assert read_meta_mat(tmp_path / "dk" / "meta.mat")[:3] == META_ORDER


def test_flat_val_devkit(tmp_path):
    root = tmp_path / "imagenet"
    for w in sorted(META_ORDER):
        _img(root / "train" / w / "x.JPEG")
    _flat_val(root, 4)
    _fake_devkit(root / "ILSVRC2012_devkit_t12" / "data")
    (root / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n3\n1\n")
    lst = find_split(root, "val")
    assert lst.classes == sorted(META_ORDER)
    # ids 1,2,3,1 -> n03, n01, n02, n03 -> sorted positions 2, 0, 1, 2
    assert lst.labels == [2, 0, 1, 2]
    assert [p.name for p in lst.paths] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 5)]
    # the two splits together: the same classes
    both = find_splits(root)
    assert both["val"].labels == [2, 0, 1, 2] and both["train"].classes == both["val"].classes


def test_flat_val_devkit_subset_of_images(tmp_path):
    root = tmp_path / "imagenet"
    _flat_val(root, 2, first=3)  # only images 3 and 4 are present
    _fake_devkit(root / "devkit")
    (root / "devkit" / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n3\n1\n")
    lst = find_split(root, "val", classes=sorted(META_ORDER))
    assert lst.labels == [1, 2]


def test_flat_val_ground_truth_without_meta(tmp_path):
    root = tmp_path / "imagenet"
    _flat_val(root, 2)
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n")
    with pytest.raises(DataError, match="meta.mat"):
        find_split(root, "val")


def test_flat_val_kaggle(tmp_path):
    # Kaggle: <top>/LOC_val_solution.csv and <top>/ILSVRC/Data/CLS-LOC/{train,val}
    top = tmp_path / "kaggle"
    root = top / "ILSVRC" / "Data" / "CLS-LOC"
    names = _flat_val(root, 3)
    rows = ["ImageId,PredictionString"]
    for name, w in zip(names, ["n01443537", "n01440764", "n15075141"]):
        rows.append(f"{name[:-5]},{w} 10 20 30 40 {w} 1 2 3 4")
    (top / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    lst = find_split(root, "val")  # no train: the 1000 ILSVRC classes
    assert len(lst.classes) == 1000
    assert lst.labels == [1, 0, 999]
    assert [lst.class_names[y] for y in lst.labels] == ["goldfish", "tench", "toilet tissue"]


def test_flat_val_kaggle_missing_row(tmp_path):
    root = tmp_path / "r"
    _flat_val(root, 2)
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    with pytest.raises(DataError, match="ILSVRC2012_val_00000002"):
        find_split(root, "val")


def test_flat_val_label_outside_train_classes(tmp_path):
    root = tmp_path / "r"
    _img(root / "train" / "n01440764" / "a.JPEG")
    _flat_val(root, 1)
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01443537 1 2 3 4\n")
    with pytest.raises(DataError, match="n01443537"):
        find_split(root, "val")


def test_flat_val_without_labels(tmp_path):
    root = tmp_path / "r"
    _flat_val(root, 2)
    with pytest.raises(DataError) as e:
        find_split(root, "val")
    msg = str(e.value)
    assert str(root / "val") in msg and "no label file" in msg and "\n" not in msg


# ---------------------------------------------------------------------------- errors


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_split(tmp_path / "nope", "train")
    with pytest.raises(DataError, match="does not exist"):
        list_splits(tmp_path / "nope")


def test_missing_split(image_tree):
    with pytest.raises(DataError) as e:
        find_split(image_tree, "test")
    assert str(image_tree / "test") in str(e.value) and "train, val" in str(e.value)


def test_split_without_class_folders(tmp_path):
    (tmp_path / "r" / "train").mkdir(parents=True)
    (tmp_path / "r" / "train" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no class folders"):
        find_split(tmp_path / "r", "train")


def test_empty_class_folder(image_tree):
    (image_tree / "train" / "empty").mkdir()
    (image_tree / "train" / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as e:
        find_split(image_tree, "train")
    assert str(image_tree / "train" / "empty") in str(e.value) and "no images" in str(e.value)


def test_train_val_classes_disagree(image_tree):
    (image_tree / "val" / "dog").rename(image_tree / "val" / "wolf")
    with pytest.raises(DataError) as e:
        find_splits(image_tree)
    msg = str(e.value)
    assert "only in val: wolf" in msg and "only in train: dog" in msg and str(image_tree / "val") in msg


def test_no_splits(tmp_path):
    (tmp_path / "r").mkdir()
    with pytest.raises(DataError, match="no train, val or test"):
        find_splits(tmp_path / "r")


def test_root_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        find_split(tmp_path / "f", "train")
