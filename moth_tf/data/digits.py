"""The embedded default data set: scikit-learn's bundled UCI handwritten digits.

1,797 real 8x8 grey-scale images of the digits 0-9, shipped inside scikit-learn, so it works with no
network. Pixel values in the original are integers 0..16; we scale them to [0, 1].
"""

import numpy as np

from moth_tf.data import base

INFO = base.DatasetInfo(
    name="digits",
    num_classes=10,
    image_shape=(8, 8, 1),
    class_names=tuple(str(i) for i in range(10)),
    # The digits are 0..16 intensities; 0.1 (about 1.6 grey levels) mirrors the small L-inf budgets
    # used for the 32x32 sets.
    train_pgd=base.PGDSettings(0.1, 8, 0.02),
    eval_pgd=base.PGDSettings(0.1, 20, 0.01),
    default_model="lenet",
)

# Fixed split: about 70/10/20, stratified, always the same images.
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_SEED = 0


def load() -> base.DatasetSplits:
  """Loads the digits with the fixed stratified 70/10/20 train/val/test split."""
  from sklearn import datasets as sk_datasets  # Imported lazily: sklearn is slow to import.

  bunch = sk_datasets.load_digits()
  x = (bunch.images.astype(np.float32) / 16.0)[..., None]
  y = bunch.target.astype(np.int64)
  train, val, test = base.stratified_split(y, SPLIT_FRACTIONS, SPLIT_SEED)
  return base.DatasetSplits(INFO, x[train], y[train], x[val], y[val], x[test], y[test])
