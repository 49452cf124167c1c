"""Data sources, splits, decoding and the tf.data pipelines."""

from __future__ import annotations

import shutil
import tarfile
import zipfile

import numpy as np
import pytest

from conftest import make_image_folder, write_image
from edgecls.config import DataConfig
from edgecls.data import limit_per_class, load_dataset, stratified_split
from edgecls.data.pipeline import augment_batch, endless, eval_dataset, mix_batch, preprocess, train_dataset
from edgecls.data.sources import list_source
from edgecls.errors import DataError


def test_folder_with_train_and_test(image_folder):
    source = list_source(str(image_folder))
    assert source.class_names == ["blue", "green", "red"]
    assert len(source.train) == 36 and len(source.test) == 18
    assert source.train.ids[0] == "train/blue/000.jpg"
    assert np.bincount(source.test.labels).tolist() == [6, 6, 6]


def test_archives_read_like_the_folder(image_folder, tmp_path):
    tar_path = tmp_path / "images.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        archive.add(image_folder, arcname="wrapper")  # one wrapping folder is stripped
    zip_path = tmp_path / "images.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(image_folder.rglob("*")):
            archive.write(path, path.relative_to(image_folder).as_posix())
    folder = list_source(str(image_folder))
    for archive_path in (tar_path, zip_path):
        source = list_source(str(archive_path))
        assert source.class_names == folder.class_names
        assert source.train.ids == folder.train.ids
        assert source.test.ids == folder.test.ids
        assert source.train.payload[5] == (image_folder / folder.train.ids[5]).read_bytes()


def test_decoding_gives_rgb_at_input_size(image_folder):
    data = load_dataset(DataConfig(source=str(image_folder), val_fraction=0.0), 32, seed=0)
    assert data.train.images.shape == (36, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (18, 32, 32, 3)
    red = data.train.images[data.train.labels == 2].reshape(-1, 3).mean(axis=0)
    assert red[0] > 150 and red[2] < 100  # colour survived decode and resize (channels not swapped)
    gray = data.train.ids.index("train/blue/003.png")
    image = data.train.images[gray].astype(int)
    assert np.abs(image[..., 0] - image[..., 2]).max() <= 2  # grayscale became three equal channels


def test_single_folder_is_split_by_seeded_fraction(image_folder, tmp_path):
    flat = tmp_path / "flat"
    shutil.copytree(image_folder / "train", flat)
    cfg = DataConfig(source=str(flat), test_fraction=0.25, val_fraction=0.0)
    first = load_dataset(cfg, 32, seed=3)
    again = load_dataset(cfg, 32, seed=3)
    assert len(first.test) == 9 and len(first.train) == 27
    assert first.test.ids == again.test.ids
    assert not set(first.test.ids) & set(first.train.ids)
    assert first.info["test_split"] == "carved (0.25)"


def test_val_split_and_limits_are_stratified(image_folder):
    cfg = DataConfig(source=str(image_folder), val_fraction=0.25, limit_per_class=5, test_limit_per_class=2)
    data = load_dataset(cfg, 32, seed=0)
    assert np.bincount(data.val.labels).tolist() == [3, 3, 3]
    assert np.bincount(data.train.labels).tolist() == [5, 5, 5]
    assert np.bincount(data.test.labels).tolist() == [2, 2, 2]
    assert not set(data.val.ids) & set(data.train.ids)


def test_split_helpers():
    labels = np.repeat(np.arange(4), 10)
    kept, held = stratified_split(labels, 0.2, seed=1)
    assert np.bincount(labels[held]).tolist() == [2, 2, 2, 2]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(40))
    assert np.bincount(labels[limit_per_class(labels, 3, seed=0)]).tolist() == [3, 3, 3, 3]


def test_corrupt_files_are_skipped_and_counted(image_folder):
    (image_folder / "train" / "red" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (image_folder / "train" / "red" / "notes.txt").write_text("hello")
    data = load_dataset(DataConfig(source=str(image_folder), val_fraction=0.0), 32, seed=0)
    assert sorted(data.info["skipped_files"]) == ["train/red/broken.jpg", "train/red/notes.txt"]
    assert len(data.train) == 36
    assert data.warnings == ["skipped 2 unreadable or oversized file(s), first: train/red/broken.jpg"]
    with pytest.raises(DataError, match=r"cannot decode train/red/broken.jpg as an image \(2 unreadable"):
        load_dataset(DataConfig(source=str(image_folder), on_bad_image="error"), 32, seed=0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda root: shutil.rmtree(root / "test" / "green"), "class folder `test/green` is missing"),
        (lambda root: (root / "test" / "zebra").mkdir(), "`test/zebra` in .* has no counterpart in train"),
        (
            lambda root: [p.unlink() for p in (root / "train" / "red").iterdir()],
            "class folder `red` in .* has no files",
        ),
    ],
)
def test_malformed_layouts(image_folder, mutate, message):
    mutate(image_folder)
    with pytest.raises(DataError, match=message):
        list_source(str(image_folder))


def test_missing_empty_and_odd_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        list_source(str(tmp_path / "empty"))
    (tmp_path / "file.csv").write_text("a,b")
    with pytest.raises(DataError, match="is a file but not an archive"):
        list_source(str(tmp_path / "file.csv"))
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="cannot read archive"):
        list_source(str(tmp_path / "bad.tar.gz"))
    write_image(tmp_path / "one" / "cat" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="a classifier needs two or more"):
        list_source(str(tmp_path / "one"))


def test_preprocess_matches_keras_applications():
    import tf_keras

    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(preprocess(pixels, "tf"), tf_keras.applications.mobilenet.preprocess_input(pixels.copy()), atol=1e-6)
    np.testing.assert_allclose(
        preprocess(pixels, "caffe"), tf_keras.applications.resnet50.preprocess_input(pixels.copy()), atol=1e-4
    )


def test_augmentation_is_seeded_and_keeps_content():
    import tensorflow as tf

    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    seed = tf.constant([1, 2], tf.int64)
    first = augment_batch(tf.constant(images), ("crop", "flip"), seed).numpy()
    again = augment_batch(tf.constant(images), ("crop", "flip"), seed).numpy()
    other = augment_batch(tf.constant(images), ("crop", "flip"), tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == images.shape and not np.array_equal(first, images)
    flipped = augment_batch(tf.constant(images), ("flip",), seed).numpy()
    for original, out in zip(images, flipped, strict=False):  # flip only: each image is itself or its mirror
        assert np.array_equal(out, original) or np.array_equal(out, original[:, ::-1])


def _constant_images(batch: int, size: int):
    """Image i filled with the value i + 1: every mixed pixel tells which images it came from."""
    return np.broadcast_to(np.arange(1, batch + 1, dtype=np.float32)[:, None, None, None], (batch, size, size, 3)).copy()


def test_mixup_blends_each_image_and_its_labels_with_one_weight():
    import tensorflow as tf

    batch, classes = 8, 8
    images, labels = _constant_images(batch, 6), np.eye(classes, dtype=np.float32)  # image i has label i
    mixed, targets = (t.numpy() for t in mix_batch(tf.constant(images), tf.constant(labels), ("mixup",),
                                                   tf.constant([5, 6], tf.int64), mixup_alpha=1.0))  # fmt: skip
    partner = batch - 1 - np.arange(batch)
    own_weight = targets[np.arange(batch), np.arange(batch)]  # read off the labels, checked against the pixels
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(targets[np.arange(batch), partner] + own_weight, 1.0, atol=1e-6)
    expected = own_weight * (np.arange(batch) + 1) + (1 - own_weight) * (partner + 1)
    np.testing.assert_allclose(mixed, np.broadcast_to(expected[:, None, None, None], mixed.shape), atol=1e-5)
    assert len(np.unique(np.round(own_weight, 4))) == batch  # a weight per image, not one per batch


def test_cutmix_pastes_one_box_and_weights_the_labels_by_its_area():
    import tensorflow as tf

    batch, size = 16, 12
    images, labels = _constant_images(batch, size), np.eye(batch, dtype=np.float32)
    mixed, targets = (t.numpy() for t in mix_batch(tf.constant(images), tf.constant(labels), ("cutmix",),
                                                   tf.constant([1, 9], tf.int64)))  # fmt: skip
    pasted_any = False
    for i in range(batch):
        partner = batch - 1 - i
        own = mixed[i, :, :, 0] == i + 1
        pasted = mixed[i, :, :, 0] == partner + 1
        assert np.all(own | pasted) and np.all(mixed[i] == mixed[i, :, :, :1])  # every pixel from one of the two
        np.testing.assert_allclose(targets[i, i], own.mean(), atol=1e-6)  # the label weight is the area kept
        if pasted.any():
            pasted_any = True
            rows, cols = np.nonzero(pasted)  # the pasted pixels fill their bounding box: one rectangle
            assert pasted.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert pasted_any


def test_mixing_weights_follow_the_beta_distribution_of_alpha():
    """Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)): alpha 0.2 mixes little, alpha 2 a lot."""
    import tensorflow as tf

    batch = 4096
    labels = tf.one_hot(np.arange(batch) % 2, 2)  # the reversed partner of an even index is odd
    images = tf.zeros([batch, 2, 2, 3])
    for alpha in (0.2, 2.0):
        _, targets = mix_batch(images, labels, ("mixup",), tf.constant([3, 4], tf.int64), mixup_alpha=alpha)
        weights = targets.numpy()[np.arange(batch), np.arange(batch) % 2]
        assert abs(weights.mean() - 0.5) < 0.03
        assert abs(weights.var() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_training_pipeline_mixes_every_target_alike():
    """With cached teacher outputs, the labels and the soft targets are blended with the same weights."""
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)).astype(np.uint8)
    labels = np.arange(8) % 4
    soft = np.eye(4, dtype=np.float32)[labels]  # soft targets equal to the labels must stay equal to them
    data = train_dataset(images, labels, num_classes=4, batch_size=8, mode="tf", augment=("flip", "mixup", "cutmix"),
                         seed=0, soft_targets=soft)  # fmt: skip
    _, (one_hot, teacher) = next(data.as_numpy_iterator())
    np.testing.assert_allclose(one_hot, teacher, atol=1e-6)
    assert ((one_hot > 0) & (one_hot < 1)).any()  # mixed, not one-hot
    again = next(data.as_numpy_iterator())[1][0]
    assert not np.allclose(one_hot, again)  # a new mix every epoch


def test_pipelines_batch_preprocess_and_one_hot():
    images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3)).astype(np.uint8)
    labels = np.arange(10) % 3
    batches = list(eval_dataset(images, labels, num_classes=3, batch_size=4, mode="tf").as_numpy_iterator())
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    np.testing.assert_allclose(batches[0][0], images[:4] / 127.5 - 1.0, atol=1e-6)
    assert batches[2][1].argmax(axis=1).tolist() == labels[8:].tolist()
    train = train_dataset(images, labels, num_classes=3, batch_size=4, mode="tf", augment=(), seed=0)
    epoch1 = np.concatenate([y.argmax(1) for _, y in train.as_numpy_iterator()])
    epoch2 = np.concatenate([y.argmax(1) for _, y in train.as_numpy_iterator()])
    assert sorted(epoch1.tolist()) == sorted(labels.tolist())
    seen = {tuple(x.reshape(-1)[:6]) for batch, _ in train.as_numpy_iterator() for x in batch}
    assert len(seen) == 10  # every image once per epoch
    assert epoch1.tolist() != epoch2.tolist()  # reshuffled each epoch (fixed seed: not by chance)


def test_endless_pipeline_gives_the_epochs_a_new_iterator_would():
    """`fit` iterates the endless pipeline once; its epochs must be the ones it got from a new iterator each epoch."""
    images = (np.arange(10)[:, None, None, None] * np.ones((1, 8, 8, 3)) * 20).astype(np.uint8)  # pixel = 20 x index
    labels = np.arange(10) % 3

    def pipeline():
        return train_dataset(images, labels, num_classes=3, batch_size=4, mode="tf", augment=("flip",), seed=3)

    epochs = [[x for x, _ in pipeline_once.as_numpy_iterator()] for pipeline_once in [pipeline()] * 3]
    repeated, steps = endless(pipeline(), len(images), 4)
    assert steps == 3  # 4 + 4 + 2 images: the last batch partial, as in an epoch of the finite pipeline
    flat = [x for x, _ in repeated.take(3 * steps).as_numpy_iterator()]
    for epoch, got in zip(epochs, (flat[i * steps : (i + 1) * steps] for i in range(3)), strict=True):
        assert [len(b) for b in got] == [4, 4, 2]
        for expected, batch in zip(epoch, got, strict=True):
            np.testing.assert_array_equal(batch, expected)  # same images, order and flips
        indices = sorted(round((image[0, 0, 0] + 1.0) * 127.5 / 20) for batch in got for image in batch)
        assert indices == list(range(10))  # each image once per epoch
    assert not np.array_equal(flat[0], flat[steps])  # and a new order every epoch


def test_real_cifar_archive_layout(shared_cifar):
    source = list_source(str(shared_cifar))
    assert source.class_names == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    assert (len(source.train), len(source.test)) == (50000, 10000)
    assert np.bincount(source.test.labels).tolist() == [1000] * 10


def test_make_image_folder_sizes_are_mixed(tmp_path):
    root = make_image_folder(tmp_path / "x", train=4, test=1)
    assert len(list((root / "train").rglob("*.*"))) == 12


def test_keras_cifar10_offline_error_says_how_to_pass_a_local_copy(monkeypatch):
    import tf_keras

    def offline():
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz: None -- [Errno -2]")

    monkeypatch.setattr(tf_keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError) as info:
        list_source("cifar10")
    message = str(info.value)
    assert message.startswith("could not load CIFAR-10 through Keras (offline?): URL fetch failure")
    assert "Pass a local copy with `--data PATH`" in message


def test_keras_cifar10_when_cached(monkeypatch):
    import tf_keras

    pixels = np.zeros((20, 32, 32, 3), np.uint8)
    labels = (np.arange(20) % 10).reshape(-1, 1)
    monkeypatch.setattr(tf_keras.datasets.cifar10, "load_data", lambda: ((pixels, labels), (pixels[:10], labels[:10])))
    source = list_source("cifar10")
    assert source.class_names[0] == "airplane" and len(source.train) == 20 and source.train.kind == "pixels"
    data = load_dataset(DataConfig(source="cifar10", val_fraction=0.0), 48, seed=0)
    assert data.train.images.shape == (20, 48, 48, 3)


def test_qat_and_pruning_train_on_unmixed_images(monkeypatch):
    """`optimize`'s few epochs drop mixup and CutMix from the run's augmentations and keep the rest."""
    import types

    import tensorflow as tf
    import tf_keras

    import edgecls.data.pipeline as pipeline
    from edgecls.config import load_config
    from edgecls.optimize import _fit

    seen = {}

    def fake_training_dataset(split, **kwargs):
        seen.update(kwargs)
        return tf.data.Dataset.from_tensors((tf.zeros([2, 8, 8, 3]), tf.one_hot([0, 1], 2)))

    monkeypatch.setattr(pipeline, "training_dataset", fake_training_dataset)
    inputs = tf_keras.Input((8, 8, 3))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2, activation="softmax")(tf_keras.layers.GlobalAveragePooling2D()(inputs)))
    cfg = load_config(overrides={"data.augment": "crop,mixup,flip,cutmix", "data.batch_size": 2, "model.weights": "none"})
    _fit(model, cfg, types.SimpleNamespace(train=[0, 1], num_classes=2), epochs=1, lr=1e-3)
    assert seen["augment"] == ("crop", "flip")
