"""The built-in digits data: scikit-learn's 1,797 8x8 handwritten digits (UCI), no download needed."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.datasets import load_digits

from robustdistill.data.pool import LoadedData, split_pool
from robustdistill.data.spec import DataSpec

logger = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))


def load(spec: DataSpec) -> LoadedData:
    bunch = load_digits()
    # Pixels are integer counts 0..16; keep them as uint8 and scale by 16 when making the float split.
    pixels = bunch.images.astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    logger.debug("digits: %d images", len(labels))
    return split_pool(pixels, labels, CLASSES, 16.0, spec.val_fraction, spec.test_fraction, spec.split_seed)
