"""edgecls: from an ImageNet-pretrained classifier to a model validated on the device.

TFMOT works only with tf-keras (Keras 2), so the legacy-Keras switch is set here,
before any submodule imports TensorFlow. A value the user set is kept.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
