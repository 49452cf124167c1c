"""edgecls: from an ImageNet-pretrained classifier to a model validated on the device.

TFMOT works only with tf-keras (Keras 2), so the legacy-Keras switch is set here,
before any submodule imports TensorFlow. So is TensorFlow's oneDNN switch: TensorFlow
turns its oneDNN kernels on by default only on CPUs with AVX512_VNNI, AVX512_BF16 or
AMX, and on the many AVX2-only CPUs (AMD EPYC and Ryzen, older Intel) it trains on its
Eigen kernels instead, 2-3x slower for MobileNet v1 0.25 at 128 px (docs/benchmarks.md,
"oneDNN"). A value the user set is kept.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
