"""The one preprocessing definition against `keras.applications`, for every registered backbone."""

from __future__ import annotations

import numpy as np
import pytest

from edgecls.models import get_spec, list_models


def keras_reference(name: str):
    """keras.applications' own preprocessing for a family, as edgecls builds it (no preprocessing layers)."""
    import tf_keras

    apps = tf_keras.applications
    return {
        "mobilenet": apps.mobilenet.preprocess_input,
        "mobilenet_v2": apps.mobilenet_v2.preprocess_input,
        # built with include_preprocessing=False, whose documented input range is [-1, 1]
        "mobilenet_v3_small": apps.mobilenet_v2.preprocess_input,
        "mobilenet_v3_large": apps.mobilenet_v2.preprocess_input,
        "resnet50": apps.resnet50.preprocess_input,
    }[name]


@pytest.mark.parametrize("name", list_models())
def test_every_path_matches_keras_applications(name):
    from edgecls import worker
    from edgecls.preprocessing import describe, normalize_numpy, normalize_tf

    mode = get_spec(name).preprocessing
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
    expected = keras_reference(name)(pixels.astype(np.float32).copy())
    np.testing.assert_allclose(normalize_numpy(pixels, mode), expected, atol=1e-5)
    np.testing.assert_allclose(normalize_tf(pixels, mode).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(worker.preprocess(pixels, mode), expected, atol=1e-5)
    meta = describe(mode)  # what a runtime reading the model file's metadata would do
    rebuilt = pixels.astype(np.float32)
    if meta["channel_order"] == "BGR":
        rebuilt = rebuilt[..., ::-1] - np.asarray(meta["mean_bgr"], np.float32)
    else:
        rebuilt = rebuilt * meta["scale"] + meta["offset"]
    np.testing.assert_allclose(rebuilt, expected, atol=1e-5)


def test_predict_on_raw_images_equals_keras_preprocessing_of_the_whole_split():
    """`runtimes.predict` with a mode converts a batch at a time (a 224-px split in float32 is 6 GB) to the same input."""
    import tf_keras

    from edgecls.runtimes import predict

    pixels = np.random.default_rng(1).integers(0, 256, (10, 4, 4, 3)).astype(np.uint8)
    batches = []

    class Recorder:
        def run(self, batch):
            batches.append(len(batch))
            return batch.reshape(len(batch), -1)

    expected = tf_keras.applications.resnet50.preprocess_input(pixels.astype(np.float32).copy())
    scores = predict(Recorder(), pixels, batch_size=4, mode="caffe")
    np.testing.assert_allclose(scores, expected.reshape(10, -1), atol=1e-5)
    assert batches == [4, 4, 2]
