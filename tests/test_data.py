import importlib
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

import mindspore as ms
import mindspore.dataset as ds

from fcn8s.build_dataset import build
from fcn8s.config import load_config
from fcn8s.data.mindrecord import MANIFEST, dataset_files
from fcn8s.data.normalize import TrainInput
from fcn8s.data.pipeline import count_samples, create_train_dataset, iterate_eval_samples
from fcn8s.data.sampling import eval_indices, rank_indices
from fcn8s.data.transforms import PAD_LABEL, TrainTransform, decode_image, decode_label, prepare_eval_image, \
    restore_prediction
from fcn8s.data.voc import read_label_png, voc_palette
from fcn8s.errors import UserError
from tests.conftest import REPO, SMALL_FC_CHANNELS, SMALL_NETWORK, run_module


def test_synthetic_tree_has_the_voc_layout(voc_tree):
    ids = open(os.path.join(voc_tree, "ImageSets", "Segmentation", "train.txt")).read().split()
    assert len(ids) == 24
    label_path = os.path.join(voc_tree, "SegmentationClass", f"{ids[0]}.png")
    with Image.open(label_path) as img:
        assert img.mode == "P"  # palette PNG like VOC
    label = read_label_png(label_path)
    image = cv2.imread(os.path.join(voc_tree, "JPEGImages", f"{ids[0]}.jpg"))
    assert image.shape[:2] == label.shape
    values = set(np.unique(label).tolist())
    assert 0 in values and 255 in values and values <= set(range(6)) | {255}


def test_voc_palette_known_colours():
    palette = voc_palette()
    assert tuple(palette[1]) == (128, 0, 0) and tuple(palette[15]) == (192, 128, 128)
    assert tuple(palette[255]) == (224, 224, 192)


def test_mindrecord_round_trip(voc_tree, mindrecord_dir):
    assert os.path.isfile(os.path.join(mindrecord_dir, MANIFEST))
    rows = list(iterate_eval_samples(mindrecord_dir, split="val"))
    assert [name for name, _, _ in rows] == open(
        os.path.join(voc_tree, "ImageSets", "Segmentation", "val.txt")).read().split()
    name, image, label = rows[0]
    np.testing.assert_array_equal(label, read_label_png(os.path.join(voc_tree, "SegmentationClass", f"{name}.png")))
    original = cv2.imread(os.path.join(voc_tree, "JPEGImages", f"{name}.jpg"))
    np.testing.assert_array_equal(image, original)  # the JPEG bytes are stored unchanged
    reader = ds.MindDataset(dataset_files(mindrecord_dir, "train"), shuffle=False)
    assert set(reader.get_col_names()) == {"file_name", "data", "label"}


@pytest.mark.parametrize("size", [1, 2, 3])
def test_train_shards_partition_the_split(mindrecord_dir, size):
    """The rows each rank's reader gets (our positions through MindDataset's SubsetSampler)."""
    files = dataset_files(mindrecord_dir, "train")
    seen = []
    for rank in range(size):
        indices = rank_indices(count_samples(mindrecord_dir), seed=1, epoch=0, consumed=0, batch_size=2,
                               rank=rank, num_ranks=size)
        reader = ds.MindDataset(files, columns_list=["file_name"], sampler=ds.SubsetSampler(indices.tolist()))
        seen.append([str(r["file_name"]) for r in reader.create_dict_iterator(output_numpy=True)])
    flat = [name for part in seen for name in part]
    assert len(flat) == len(set(flat)) == 24  # 24 samples: every one read by exactly one rank


@pytest.mark.parametrize("size", [1, 2, 4, 5])
def test_eval_shares_partition_the_split(mindrecord_dir, size):
    """6 val images on 4 or 5 ranks: MindDataset's num_shards would read 8 or 10 (wrapping around)."""
    shares = [[name for name, _, _ in iterate_eval_samples(mindrecord_dir, rank, size)] for rank in range(size)]
    flat = [name for share in shares for name in share]
    assert sorted(flat) == sorted(name for name, _, _ in iterate_eval_samples(mindrecord_dir)) and len(flat) == 6
    assert [len(share) for share in shares] == [len(eval_indices(6, rank, size)) for rank in range(size)]


def _damage(dataset, split, how):
    """Damage the second shard of ``split`` in a copy of a dataset: truncate, drop its .db, or flip a byte."""
    path = os.path.join(dataset, f"{split}.mindrecord-00001-of-00002")
    if how == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    elif how == "no-db":
        os.remove(path + ".db")
    else:
        with open(path, "r+b") as handle:
            handle.seek(os.path.getsize(path) // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))
    return path


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """Weights of the small network, so that eval gets as far as reading the data."""
    from fcn8s.model import FCN8s

    path = str(tmp_path_factory.mktemp("ckpt") / "net.ckpt")
    ms.save_checkpoint(FCN8s(21, fc_channels=SMALL_FC_CHANNELS), path)
    yield path
    os.remove(path)


@pytest.mark.parametrize("module, split", [("fcn8s.eval", "val"), ("fcn8s.train", "train")])
@pytest.mark.parametrize("how, message", [
    ("truncated", "bytes, manifest.json says"),
    ("no-db", "its index train.mindrecord-00001-of-00002.db is missing"),
    ("sha", "sha256 differs from manifest.json"),
])
def test_damaged_dataset_is_one_line_naming_the_file(mindrecord_dir, small_checkpoint, tmp_path, module, split, how,
                                                     message):
    dataset = str(tmp_path / "dataset")
    shutil.copytree(mindrecord_dir, dataset)
    path = _damage(dataset, split, how)
    args = ["--config", "configs/cpu_smoke.yaml", f"data.mindrecord_dir={dataset}", *SMALL_NETWORK]
    args += ["--verify-data"] if how == "sha" else []  # sizes and .db are always checked
    result = run_module(module, *args, *(["--ckpt", small_checkpoint] if module == "fcn8s.eval" else []), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, no MindSpore stack
    assert result.stderr.startswith(f"error: {path}: ") and message.replace("train", split) in result.stderr


def test_sha_is_only_checked_with_verify_data_and_reader_errors_name_the_dataset(mindrecord_dir, tmp_path):
    dataset = str(tmp_path / "dataset")
    shutil.copytree(mindrecord_dir, dataset)
    _damage(dataset, "val", "sha")
    assert len(dataset_files(dataset, "val")) == 2  # sizes match: only --verify-data reads every byte
    manifest_path = os.path.join(dataset, MANIFEST)
    manifest = json.load(open(manifest_path))
    del manifest["splits"]["val"]["bytes"]  # as written before sizes were recorded
    json.dump(manifest, open(manifest_path, "w"))
    _damage(dataset, "val", "truncated")
    with pytest.raises(UserError, match=r"\('val' MindRecord files\): cannot read: .*Failed to read file"):
        list(iterate_eval_samples(dataset))


def test_train_dataset_batches_and_label_values(mindrecord_dir):
    cfg = load_config(None, [f"data.mindrecord_dir={mindrecord_dir}", "data.crop_size=64", "train.batch_size=4"])
    dataset = create_train_dataset(cfg, rank=1, size=2)
    assert dataset.get_dataset_size() == 3  # 12 samples on this rank / batch 4
    prepare = TrainInput.from_config(cfg)
    for images, labels in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
        assert images.shape == (4, 3, 64, 64) and images.dtype == np.uint8
        assert labels.shape == (4, 64, 64) and labels.dtype == np.uint8
        assert set(np.unique(labels).tolist()) <= set(range(21)) | {255, PAD_LABEL}
        normalised, targets = (t.asnumpy() for t in prepare(ms.Tensor(images), ms.Tensor(labels)))
        assert normalised.dtype == np.float32 and targets.dtype == np.int32
        assert set(np.unique(targets).tolist()) <= set(range(21)) | {255}


def test_pad_label_value_is_reserved(mindrecord_dir):
    cfg = load_config(None, [f"data.mindrecord_dir={mindrecord_dir}", f"model.num_classes={PAD_LABEL + 1}"])
    with pytest.raises(UserError, match=f"model.num_classes: at most {PAD_LABEL} \\(label value {PAD_LABEL}"):
        create_train_dataset(cfg)


def _augment(transform, image, label):
    return transform.augment(image.copy(), label.copy())


def _prepare(prepare, image, label):
    """One uint8 sample through the in-graph normalisation -> (float32 CHW, int32 HW)."""
    images, labels = prepare(ms.Tensor(image[None]), ms.Tensor(label[None]))
    return images.asnumpy()[0], labels.asnumpy()[0]


def test_augmentation_keeps_image_and_label_aligned():
    """Encode the class in the image colour: after any scale/crop/flip they must still agree."""
    rng = np.random.default_rng(1)
    label = np.zeros((50, 70), np.uint8)
    label[10:40, 5:30] = 3
    label[:, 50:] = 7
    image = np.zeros((50, 70, 3), np.uint8)
    image[..., 0] = label * 30  # blue channel = 30 x class
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 5.0)
    transform = TrainTransform(64, 0.5, 2.0, seed=int(rng.integers(1000)))
    prepare = TrainInput(mean, std)
    flips = set()
    for _ in range(30):
        raw_image, raw_label = _augment(transform, image, label)
        assert raw_image.shape == (3, 64, 64) and raw_label.shape == (64, 64) and raw_image.dtype == np.uint8
        out_image, out_label = _prepare(prepare, raw_image, raw_label)
        assert set(np.unique(out_label).tolist()) <= {0, 3, 7, 255}
        blue = out_image[0] * std[0] + mean[0]
        valid = out_label != 255
        # interior pixels agree with the label's class; a misaligned crop/flip would be off by >= 90
        core = valid & (cv2.erode((out_label == 3).astype(np.uint8), np.ones((9, 9)), borderType=cv2.BORDER_CONSTANT,
                                    borderValue=0) > 0)
        assert np.all(np.abs(blue[core] - 90.0) < 10)  # cubic ringing stays small
        if core.sum() > 20:
            assert np.mean(np.abs(blue[core] - 90.0) < 1) > 0.9
        # padding: label 255 and image equal to the mean (0 after normalisation)
        padding = raw_label == PAD_LABEL
        assert np.all(out_image[:, padding] == 0) and np.all(out_label[padding] == 255)
        flips.add(bool(out_label[:, 0].max() == 7 or out_label[:, 0].min() == 7))
    assert flips == {True, False}  # both orientations occur


class _SeedDraws:
    """The seed's global ``np.random`` draws, served through the Generator methods TrainTransform calls."""

    def __init__(self, state: np.random.RandomState) -> None:
        self.state = state

    def uniform(self, low=0.0, high=1.0):
        return self.state.uniform(low, high)

    def integers(self, low, high):
        return self.state.randint(low, high)


def test_augmentation_equals_the_seed_pipeline_given_the_same_draws(voc_tree, monkeypatch):
    """Ours (uint8 crop + in-graph normalisation) == the tutorial's preprocess (benchmarks/data.py)."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
    seed = importlib.import_module("data")
    prepare = TrainInput(seed.MEAN, seed.STD)
    transform = TrainTransform(64, 0.5, 2.0)
    ids = open(os.path.join(voc_tree, "ImageSets", "Segmentation", "train.txt")).read().split()
    padded = flipped = 0
    for k, sid in enumerate(ids[:12]):
        jpeg = open(os.path.join(voc_tree, "JPEGImages", f"{sid}.jpg"), "rb").read()
        _, png = cv2.imencode(".png", read_label_png(os.path.join(voc_tree, "SegmentationClass", f"{sid}.png")))
        np.random.seed(k)
        seed_image, seed_label = seed.seed_preprocess(jpeg, png.tobytes(), crop=64)
        raw_image, raw_label = transform.augment(decode_image(jpeg), decode_label(png.tobytes()),
                                                 _SeedDraws(np.random.RandomState(k)))
        image, label = _prepare(prepare, raw_image, raw_label)
        np.testing.assert_allclose(image, seed_image, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(label, seed_label)
        padded += bool((raw_label == PAD_LABEL).any())
        flipped += bool((raw_label[:, 0] == PAD_LABEL).any())
    assert padded >= 3 and flipped >= 1  # the padding and flip paths were both compared


def test_train_input_runs_in_graph_mode():
    prepare = TrainInput((1.0, 2.0, 3.0), (2.0, 4.0, 8.0), ignore_label=250)
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    labels = np.random.default_rng(1).choice(np.array([0, 5, 250, PAD_LABEL], np.uint8), (2, 8, 8))

    @ms.jit
    def step(x, y):
        return prepare(x, y)

    out_images, out_labels = (t.asnumpy() for t in step(ms.Tensor(images), ms.Tensor(labels)))
    expected = (images.astype(np.float32) - np.float32([1, 2, 3]).reshape(1, 3, 1, 1)) / \
        np.float32([2, 4, 8]).reshape(1, 3, 1, 1)
    expected[np.broadcast_to((labels == PAD_LABEL)[:, None], expected.shape)] = 0
    np.testing.assert_allclose(out_images, expected, rtol=1e-6)
    np.testing.assert_array_equal(out_labels, np.where(labels == PAD_LABEL, 250, labels).astype(np.int32))


def test_invalid_augmentation_settings():
    with pytest.raises(ValueError, match="min_scale"):
        TrainTransform(64, 2.0, 0.5)
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform(0, 0.5, 2.0)
    with pytest.raises(ValueError, match="3 values"):
        TrainInput((0, 0), (1, 1, 1))


def test_eval_preparation_pads_then_crops_back():
    image = np.random.default_rng(0).integers(0, 255, (70, 45, 3), dtype=np.uint8)
    canvas, valid = prepare_eval_image(image, 96, (0, 0, 0), (1, 1, 1))
    assert canvas.shape == (3, 96, 96) and valid == (70, 45)
    np.testing.assert_array_equal(canvas[:, :70, :45], image.transpose(2, 0, 1))
    logits = np.zeros((4, 96, 96), np.float32)
    logits[2, :70, :45] = 1.0
    pred = restore_prediction(logits, valid, (70, 45))
    assert pred.shape == (70, 45) and np.all(pred == 2)
    big = np.zeros((200, 100, 3), np.uint8)
    canvas, valid = prepare_eval_image(big, 96, (0, 0, 0), (1, 1, 1))
    assert valid == (96, 48)
    assert restore_prediction(np.zeros((4, 96, 96), np.float32), valid, (200, 100)).shape == (200, 100)


def _copy_tree(voc_tree, tmp_path):
    root = str(tmp_path / "VOC2012")
    shutil.copytree(voc_tree, root)
    return root


def _first_id(root, split="train"):
    return open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")).read().split()[0]


@pytest.mark.parametrize("damage, message", [
    ("truncate_jpeg", "not a decodable image"),
    ("remove_label", "label file missing"),
    ("resize_label", "label size"),
    ("bad_value", "label values [42]"),
    ("rgb_not_palette", "is not in the VOC palette"),
])
def test_bad_samples_stop_the_build_and_name_the_file(voc_tree, tmp_path, damage, message):
    root = _copy_tree(voc_tree, tmp_path)
    sid = _first_id(root)
    image_path = os.path.join(root, "JPEGImages", f"{sid}.jpg")
    label_path = os.path.join(root, "SegmentationClass", f"{sid}.png")
    label = read_label_png(label_path)
    if damage == "truncate_jpeg":
        data = open(image_path, "rb").read()
        open(image_path, "wb").write(data[:20])
    elif damage == "remove_label":
        os.remove(label_path)
    elif damage == "resize_label":
        Image.fromarray(label[:-3]).save(label_path)
    elif damage == "bad_value":
        label[0, 0] = 42
        Image.fromarray(label).save(label_path)
    else:
        rgb = voc_palette()[label]
        rgb[0, 0] = (1, 2, 3)
        Image.fromarray(rgb).save(label_path)
    out = str(tmp_path / "out")
    result = run_module("fcn8s.build_dataset", "--voc-root", root, "--out", out, "--workers", "1", timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert message in result.stderr and sid in result.stderr
    assert not os.path.exists(out)
    skipped = build(root, out, workers=1, skip_bad=True)
    assert skipped["splits"]["train"]["skipped"] == 1 and skipped["splits"]["train"]["count"] == 23


def test_rgb_palette_labels_are_decoded(voc_tree, tmp_path):
    root = _copy_tree(voc_tree, tmp_path)
    sid = _first_id(root)
    label_path = os.path.join(root, "SegmentationClass", f"{sid}.png")
    label = read_label_png(label_path)
    Image.fromarray(voc_palette()[label]).save(label_path)
    np.testing.assert_array_equal(read_label_png(label_path), label)


def test_list_and_split_errors(voc_tree, tmp_path):
    with pytest.raises(UserError, match="VOC root not found"):
        build(str(tmp_path / "missing"), str(tmp_path / "o"))
    root = _copy_tree(voc_tree, tmp_path)
    train_list = os.path.join(root, "ImageSets", "Segmentation", "train.txt")
    ids = open(train_list).read().split()
    open(train_list, "w").write("\n".join(ids + ids[:1]) + "\n")
    with pytest.raises(UserError, match=f"id {ids[0]} is listed twice"):
        build(root, str(tmp_path / "o"))
    open(train_list, "w").write("\n")
    with pytest.raises(UserError, match="split 'train' is empty"):
        build(root, str(tmp_path / "o"))


def test_val_images_are_excluded_from_train(voc_tree, tmp_path):
    root = _copy_tree(voc_tree, tmp_path)
    val_id = _first_id(root, "val")
    with open(os.path.join(root, "ImageSets", "Segmentation", "train.txt"), "a") as handle:
        handle.write(f"{val_id}\n")
    manifest = build(root, str(tmp_path / "o"), workers=2)
    assert manifest["excluded_val_overlap"] == 1
    assert manifest["splits"]["train"]["count"] == 24


def _crash(*args, **kwargs):
    """Stands in for mindrecord.publish: the build is interrupted just before it would complete."""
    raise KeyboardInterrupt


def test_interrupted_build_never_looks_complete(voc_tree, tmp_path, monkeypatch):
    from fcn8s.data import mindrecord
    out = str(tmp_path / "o")
    monkeypatch.setattr(mindrecord, "publish", _crash)
    with pytest.raises(KeyboardInterrupt):
        build(voc_tree, out, workers=1)
    assert not os.path.exists(out)
    assert os.path.isdir(out + ".partial")
    with pytest.raises(UserError, match="dataset not found"):
        dataset_files(out, "train")
    monkeypatch.undo()
    build(voc_tree, out, workers=1)  # a rerun cleans up and completes
    assert not os.path.exists(out + ".partial") and os.path.isfile(os.path.join(out, MANIFEST))


def test_an_incomplete_build_is_refused_in_one_line(voc_tree, tmp_path, monkeypatch):
    """What an interrupted build leaves behind is never read as a dataset (library and CLI)."""
    from fcn8s.data import mindrecord
    out = str(tmp_path / "o")
    monkeypatch.setattr(mindrecord, "publish", _crash)
    with pytest.raises(KeyboardInterrupt):
        build(voc_tree, out, workers=1)
    monkeypatch.undo()
    partial = out + ".partial"
    assert mindrecord.split_files(partial, "train")  # every shard is there, only the manifest is not
    with pytest.raises(UserError, match=f"dataset not found: {out} .*{partial} is an incomplete build"):
        dataset_files(out, "train")
    with pytest.raises(UserError, match=f"{partial}: incomplete build"):
        dataset_files(partial, "train")  # pointed at the staging directory itself
    shutil.copytree(partial, out)  # a manifest-less dataset directory whose rebuild did not finish
    with pytest.raises(UserError, match=f"{out}: incomplete build"):
        dataset_files(out, "train")
    result = run_module("fcn8s.train", "--config", "configs/cpu_smoke.yaml", f"data.mindrecord_dir={partial}",
                        f"run.output_dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"error: {partial}: incomplete build (build_dataset did not finish); rerun build_dataset"]


@pytest.fixture(scope="module")
def sbd_tree(voc_tree, tmp_path_factory):
    from fcn8s.data.synthetic import generate_sbd
    voc_train = open(os.path.join(voc_tree, "ImageSets", "Segmentation", "train.txt")).read().split()
    voc_val = open(os.path.join(voc_tree, "ImageSets", "Segmentation", "val.txt")).read().split()
    root = str(tmp_path_factory.mktemp("sbd") / "benchmark_RELEASE")
    # 8 new train + 4 new val ids, plus one id that VOC train has and one that VOC val has
    generate_sbd(root, num_train=8, num_val=4, reuse_ids=[voc_train[0], voc_val[0]])
    return root


def test_sbd_labels_decode_from_the_mat_struct(sbd_tree):
    import scipy.io

    from fcn8s.data.sbd import list_sbd_samples, read_sbd_label
    sample = list_sbd_samples(sbd_tree, "train")[0]
    raw = scipy.io.loadmat(sample.label_path)["GTcls"]["Segmentation"][0, 0]
    label = read_sbd_label(sample.label_path)
    np.testing.assert_array_equal(label, raw)
    assert label.dtype == np.uint8 and label.shape == cv2.imread(sample.image_path).shape[:2]
    assert sample.source == "sbd" and set(np.unique(label).tolist()) <= set(range(21)) | {255}


def test_train_aug_composition_counts_and_sources(voc_tree, sbd_tree, tmp_path):
    out = str(tmp_path / "aug")
    manifest = build(voc_tree, out, shards=3, workers=2, sbd_root=sbd_tree)
    # 24 VOC train + 10 SBD train + 4 SBD val; 1 duplicate (VOC wins), 1 VOC val image excluded
    assert manifest["duplicates_removed"] == 1 and manifest["excluded_val_overlap"] == 1
    train = manifest["splits"]["train"]
    assert train["count"] == 24 + 8 + 4 and train["by_source"] == {"voc": 24, "sbd": 12}
    assert manifest["splits"]["val"]["count"] == 6 and len(train["files"]) == 3
    voc_val = open(os.path.join(voc_tree, "ImageSets", "Segmentation", "val.txt")).read().split()
    names = {name for name, _, _ in iterate_eval_samples(out, split="train")}
    assert len(names) == 36 and not names & set(voc_val)
    voc_train0 = open(os.path.join(voc_tree, "ImageSets", "Segmentation", "train.txt")).read().split()[0]
    assert manifest["label_source"][voc_train0] == "voc" and manifest["label_source"]["2008_000000"] == "sbd"
    assert "sbd" in manifest["sources"]


def test_bad_sbd_mat_is_named(voc_tree, sbd_tree, tmp_path):
    root = str(tmp_path / "sbd")
    shutil.copytree(sbd_tree, root)
    bad = os.path.join(root, "dataset", "cls", "2008_000001.mat")
    open(bad, "wb").write(b"not a mat file")
    result = run_module("fcn8s.build_dataset", "--voc-root", voc_tree, "--sbd-root", root, "--out",
                        str(tmp_path / "o"), "--workers", "1", timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "2008_000001.mat" in result.stderr and not os.path.exists(tmp_path / "o")


def test_missing_sbd_root_is_a_clear_error(voc_tree, tmp_path):
    with pytest.raises(UserError, match="SBD root not found"):
        build(voc_tree, str(tmp_path / "o"), sbd_root=str(tmp_path / "nope"))
