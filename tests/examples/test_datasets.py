"""ISIC datasets: official layouts, labels from the CSVs, masks, bad input, splits."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from examples.isic import (
    ImageReadError,
    ISIC2016Dataset,
    ISIC2017Dataset,
    ISIC2018Dataset,
    lesion_split,
    make_synthetic_isic2017,
)
from tests._support.data import shared_subset

PREFIX = {"train": "ISIC-2017_Training", "val": "ISIC-2017_Validation", "test": "ISIC-2017_Test_v2"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_isic2017(
        tmp_path_factory.mktemp("syn") / "isic2017", n_train=30, n_val=9, n_test=9, size=64
    )


def _csv_rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    }


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_2017_labels_follow_csv_and_ignore_superpixels(synth, split):
    rows = _csv_rows(synth / f"{PREFIX[split]}_Part3_GroundTruth.csv")
    decoys = list((synth / f"{PREFIX[split]}_Data").glob("*_superpixels.png"))
    assert len(decoys) == 2
    ds = ISIC2017Dataset(synth, split, task="3class")
    assert ds.ids == [r["image_id"] for r in rows]
    assert not any("superpixels" in str(p) for p in ds.image_paths)
    mel = np.array([float(r["melanoma"]) for r in rows])
    sk = np.array([float(r["seborrheic_keratosis"]) for r in rows])
    np.testing.assert_array_equal(ds.labels, (mel + 2 * sk).astype(int))
    counts = ds.class_counts()
    assert counts == {
        "nevus": int(((mel == 0) & (sk == 0)).sum()),
        "melanoma": int(mel.sum()),
        "seborrheic_keratosis": int(sk.sum()),
    }
    both = ISIC2017Dataset(synth, split, task="both")
    np.testing.assert_array_equal(both.labels, np.stack([mel, sk], 1))
    item = both[0]
    assert item["label"].dtype == torch.float32 and item["label"].tolist() == [mel[0], sk[0]]
    for task, col in (("melanoma", mel), ("seborrheic_keratosis", sk)):
        single = ISIC2017Dataset(synth, split, task=task)
        np.testing.assert_array_equal(single.labels, col.astype(int))
        assert single.class_names == ("other", task)
        assert single[1]["label"].dtype == torch.long and int(single[1]["label"]) == col[1]


def test_2017_item_image_mask_alignment(synth):
    ds = ISIC2017Dataset(synth, "train", task="melanoma")
    item = ds[2]
    assert item["id"] == ds.ids[2]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["mask"].shape == (1, 64, 64) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert bool(item["has_mask"])
    ref = np.asarray(Image.open(ds.mask_paths[2])) > 127
    np.testing.assert_array_equal(item["mask"][0].numpy().astype(bool), ref)
    # lesions are darker than skin: the mask marks the dark blob
    gray = item["image"].mean(0)
    assert gray[item["mask"][0] > 0].mean() < gray[item["mask"][0] == 0].mean()


def test_2017_load_size_resizes_image_and_mask(synth):
    ds = ISIC2017Dataset(synth, "val", task="3class", load_size=(40, 48))
    item = ds[0]
    assert item["image"].shape == (3, 40, 48) and item["mask"].shape == (1, 40, 48)
    ds = ISIC2017Dataset(synth, "val", task="3class", load_size=32)
    assert ds[0]["image"].shape == (3, 32, 32)


def test_2017_bad_arguments(synth):
    with pytest.raises(ValueError, match="split must be one of"):
        ISIC2017Dataset(synth, "valid")
    with pytest.raises(ValueError, match="task must be one of"):
        ISIC2017Dataset(synth, "train", task="nevus")
    with pytest.raises(ValueError, match="cache_dir needs load_size"):
        ISIC2017Dataset(synth, "train", cache_dir=synth.parent / "cache")


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_csvs_name_the_file_and_columns(synth, tmp_path):
    root = _copy_tree(synth, tmp_path / "d")
    csv_path = root / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    csv_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"Validation_Part3_GroundTruth\.csv.*image_id"):
        ISIC2017Dataset(root, "val")
    csv_path.write_text("image,MEL\nISIC_0000030,1.0\n")
    with pytest.raises(
        ValueError, match=r"Validation_Part3_GroundTruth\.csv.*seborrheic_keratosis"
    ):
        ISIC2017Dataset(root, "val")
    csv_path.write_text("image_id,melanoma,seborrheic_keratosis\nISIC_0000030,1.0,1.0\n")
    with pytest.raises(ValueError, match="both melanoma and seborrheic"):
        ISIC2017Dataset(root, "val")
    csv_path.write_text("image_id,melanoma,seborrheic_keratosis\nISIC_0000030,yes,0\n")
    with pytest.raises(ValueError, match="non-numeric"):
        ISIC2017Dataset(root, "val")


def test_ids_without_images_are_counted(synth, tmp_path):
    root = _copy_tree(synth, tmp_path / "d")
    data = root / "ISIC-2017_Test_v2_Data"
    ids = [r["image_id"] for r in _csv_rows(root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv")]
    for i in ids[3:6]:
        (data / f"{i}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=rf"3 ids .*first: {ids[3]}, {ids[4]}, {ids[5]}"):
        ISIC2017Dataset(root, "test")


def test_truncated_image_raises_or_is_skipped(synth, tmp_path, caplog):
    root = _copy_tree(synth, tmp_path / "d")
    ds = ISIC2017Dataset(root, "val", task="3class")
    bad = ds.image_paths[4]
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(ImageReadError, match=bad.name):
        ds[4]
    with caplog.at_level("WARNING"):
        skipping = ISIC2017Dataset(root, "val", task="3class", skip_bad=True)
    assert skipping.skipped == [ds.ids[4]] and len(skipping) == len(ds) - 1
    assert ds.ids[4] not in skipping.ids and "1 skipped" in skipping.summary()
    assert bad.name in caplog.text
    cached = ISIC2017Dataset(
        root,
        "val",
        "3class",
        load_size=32,
        cache_dir=tmp_path / "c",
        skip_bad=True,
        progress=False,
    )
    assert cached.skipped == [ds.ids[4]]
    with pytest.raises(ImageReadError, match=bad.name):
        ISIC2017Dataset(root, "val", load_size=32, cache_dir=tmp_path / "c2", progress=False)


def test_mask_of_other_size_is_resized(synth, tmp_path):
    root = _copy_tree(synth, tmp_path / "d")
    ds = ISIC2017Dataset(root, "train")
    ref = Image.open(ds.mask_paths[0])
    ref.resize((100, 80), Image.Resampling.NEAREST).save(ds.mask_paths[0])
    item = ds[0]
    assert item["mask"].shape == (1, 64, 64)
    agree = (item["mask"][0].numpy() > 0) == (np.asarray(ref) > 127)
    assert agree.mean() > 0.97


def test_missing_masks_are_explicit(synth, tmp_path):
    root = _copy_tree(synth, tmp_path / "d")
    ds = ISIC2017Dataset(root, "test")
    ds.mask_paths[1].unlink()
    ds = ISIC2017Dataset(root, "test")
    assert ds.mask_paths[1] is None and not bool(ds[1]["has_mask"]) and bool(ds[0]["has_mask"])
    assert float(ds[1]["mask"].abs().sum()) == 0.0 and ds[1]["mask"].shape == (1, 64, 64)


def test_data_root_is_never_written(synth, tmp_path):
    before = _snapshot(synth)
    ds = ISIC2017Dataset(synth, "train", load_size=32, cache_dir=tmp_path / "cache", progress=False)
    _ = [ds[i] for i in range(3)]
    assert _snapshot(synth) == before
    with pytest.raises(ValueError, match="inside the data folder"):
        ISIC2017Dataset(synth, "train", load_size=32, cache_dir=synth / "cache")


# --- real data (../shared/data) -------------------------------------------------------------


def test_2017_mini_counts_and_masks():
    root = shared_subset("isic2017_256_mini")
    for split, per_class in (("train", 10), ("val", 5), ("test", 5)):
        ds = ISIC2017Dataset(root, split, task="3class")
        assert ds.class_counts() == dict.fromkeys(ds.class_names, per_class)
        item = ds[0]
        assert item["image"].shape == (3, 256, 256)
        assert bool(item["has_mask"]) == (split != "test")  # no test masks in this copy
        if split != "test":
            assert 0 < float(item["mask"].mean()) < 1


def test_2017_full_counts_match_readme():
    root = shared_subset("isic2017_256")
    expected = {"train": (1372, 374, 254), "val": (78, 30, 42), "test": (393, 117, 90)}
    for split, counts in expected.items():
        ds = ISIC2017Dataset(root, split, task="3class")
        assert tuple(ds.class_counts().values()) == counts
        masks = sum(p is not None for p in ds.mask_paths)
        assert masks == (0 if split == "test" else len(ds))


def test_2018_mini_counts_and_split():
    root = shared_subset("isic2018_200x150_mini")
    ds = ISIC2018Dataset(root, "all")
    assert ds.class_counts() == dict.fromkeys(ISIC2018Dataset.class_names, 5)
    item = ds[0]
    assert item["image"].shape == (3, 150, 200) and bool(item["has_mask"])


def test_2018_full_counts_and_lesion_split(tmp_path):
    root = shared_subset("isic2018_200x150")
    ds = ISIC2018Dataset(root, "all")
    assert len(ds) == 10015
    assert ds.class_counts() == {
        "MEL": 1113, "NV": 6705, "BCC": 514, "AKIEC": 327, "BKL": 1099, "DF": 115, "VASC": 142,
    }  # fmt: skip
    split_file = tmp_path / "split.json"
    parts = {s: ISIC2018Dataset(root, s, split_file=split_file) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 10015
    lesions = {s: set(p.lesion_ids) for s, p in parts.items()}
    assert not lesions["train"] & lesions["val"] and not lesions["train"] & lesions["test"]
    assert not lesions["val"] & lesions["test"]
    for s, frac in (("val", 0.1), ("test", 0.2)):
        assert abs(len(parts[s]) / 10015 - frac) < 0.02
        # stratified: every class in every split, in about the overall proportion
        share = np.bincount(parts[s].labels, minlength=7) / np.bincount(ds.labels)
        assert np.all(np.abs(share - frac) < 0.06), share
    saved = json.loads(split_file.read_text())["assignment"]
    assert sorted(saved) == sorted(ds.ids)


def test_lesion_split_groups_seeds_and_saves(tmp_path):
    lesions = [f"L{k // 3}" for k in range(300)]  # 3 images per lesion
    labels = np.array([int(lesion[1:]) % 4 for lesion in lesions])
    ids = [f"ISIC_{k:07d}" for k in range(300)]
    a = lesion_split(ids, labels, lesions, seed=1)
    assert a == lesion_split(ids, labels, lesions, seed=1)
    assert a != lesion_split(ids, labels, lesions, seed=2)
    by_lesion: dict[str, set] = {}
    for i, lesion in zip(ids, lesions, strict=True):
        by_lesion.setdefault(lesion, set()).add(a[i])
    assert all(len(v) == 1 for v in by_lesion.values())
    for c in range(4):  # per class within one lesion (3 images) of the target
        in_class = [a[i] for i, y in zip(ids, labels, strict=True) if y == c]
        assert abs(in_class.count("test") - 0.2 * 75) <= 1.5
        assert abs(in_class.count("val") - 0.1 * 75) <= 1.5
    with pytest.raises(ValueError, match="val_fraction"):
        lesion_split(ids, labels, lesions, val_fraction=1.2)
    with pytest.raises(ValueError, match="one entry per image"):
        lesion_split(ids[:-1], labels, lesions)


def test_2018_split_file_roundtrip_and_mini(tmp_path):
    root = shared_subset("isic2018_200x150_mini")
    split_file = tmp_path / "s" / "split.json"
    first = ISIC2018Dataset(root, "train", split_file=split_file, split_seed=3)
    assert split_file.is_file()
    again = ISIC2018Dataset(root, "train", split_file=split_file, split_seed=3)  # read back
    assert first.ids == again.ids
    with pytest.raises(ValueError, match="inside the data folder"):
        ISIC2018Dataset(root, "train", split_file=root / "split.json")
    # a file made with another seed is stale: refused when asked to, else recomputed
    with pytest.raises(ValueError, match=r"other settings: seed 3 \(now 99\)"):
        ISIC2018Dataset(root, "train", split_file=split_file, split_seed=99, split_mismatch="error")
    assert json.loads(split_file.read_text())["seed"] == 3
    other = ISIC2018Dataset(root, "train", split_file=split_file, split_seed=99)
    assert json.loads(split_file.read_text())["seed"] == 99
    assert other.ids == ISIC2018Dataset(root, "train", split_seed=99).ids
    payload = json.loads(split_file.read_text())
    payload["assignment"].pop(other.ids[0])
    split_file.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="misses 1 image ids"):
        ISIC2018Dataset(root, "train", split_file=split_file, split_seed=99, split_mismatch="error")


def _write_2016(root: Path, src: ISIC2017Dataset, header_test: bool = False) -> Path:
    for split, name in (("train", "Training"), ("test", "Test")):
        data = root / f"ISBI2016_ISIC_Part3_{name}_Data"
        data.mkdir(parents=True)
        lines = []
        for k, (i, p) in enumerate(zip(src.ids, src.image_paths, strict=True)):
            os.link(p, data / p.name)
            mal = int(src.labels[k] == 1)
            lines.append(f"{i},{('benign', 'malignant')[mal] if split == 'train' else mal}")
        (root / f"ISBI2016_ISIC_Part3_{name}_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def test_2016_layout(synth, tmp_path):
    src = ISIC2017Dataset(synth, "train", task="melanoma")
    root = _write_2016(tmp_path / "isic2016", src)
    for split in ("train", "test"):
        ds = ISIC2016Dataset(root, split)
        assert ds.ids == src.ids
        np.testing.assert_array_equal(ds.labels, src.labels)
        assert ds.class_counts() == {
            "benign": int((src.labels == 0).sum()),
            "malignant": int(src.labels.sum()),
        }
        assert not bool(ds[0]["has_mask"]) and ds[0]["image"].shape == (3, 64, 64)
    (root / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv").write_text("ISIC_0000000,maybe\n")
    with pytest.raises(ValueError, match="benign/malignant or 0/1"):
        ISIC2016Dataset(root, "test")


def _write_2018(root: Path, n: int = 14) -> list[str]:
    gt = root / "ISIC2018_Task3_Training_GroundTruth"
    data = root / "ISIC2018_Task3_Training_Input"
    gt.mkdir(parents=True)
    data.mkdir()
    ids = [f"ISIC_{24306 + k:07d}" for k in range(n)]
    lines = ["image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"]
    for k, i in enumerate(ids):
        Image.new("RGB", (20, 16), (k * 10, 80, 90)).save(data / f"{i}.jpg")
        lines.append(",".join([i, *("1.0" if c == k % 7 else "0.0" for c in range(7))]))
    (gt / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return ids


def test_2018_lesion_groups_sources_and_bad_csv(tmp_path, caplog):
    from examples.isic import read_lesion_groups

    root = tmp_path / "isic2018"
    ids = _write_2018(root)
    with caplog.at_level("WARNING"):
        assert read_lesion_groups(root, ids) == {i: i for i in ids}  # no file: one group each
    assert "splitting by image" in caplog.text
    grouping = (
        root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_LesionGroupings.csv"
    )
    grouping.write_text(
        "image,lesion_id\n" + "".join(f"{i},L{k // 2}\n" for k, i in enumerate(ids))
    )
    groups = read_lesion_groups(root, ids)
    assert groups[ids[0]] == groups[ids[1]] == "L0" != groups[ids[2]]
    (root / "HAM10000_metadata.csv").write_text("lesion,image_id\nx,y\n")
    with pytest.raises(ValueError, match=r"HAM10000_metadata\.csv.*lesion_id"):
        read_lesion_groups(root, ids)
    (root / "HAM10000_metadata.csv").unlink()
    ds = ISIC2018Dataset(root, "all")
    assert ds.lesion_ids[:3] == ["L0", "L0", "L1"] and ds.task == "7class"
    csv_path = (
        root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    )
    csv_path.write_text("image,MEL,NV\nISIC_0024306,1.0,0.0\n")
    with pytest.raises(ValueError, match=r"Training_GroundTruth\.csv.*BCC"):
        ISIC2018Dataset(root, "all")
    csv_path.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0024306,1.0,1.0,0,0,0,0,0\n")
    with pytest.raises(ValueError, match="not one-hot"):
        ISIC2018Dataset(root, "all")
