"""Tests for the model registry and the paper's architectures (moth_tf.models).

Parameter counts are the ones of the authors' networks rebuilt in Keras 3 (see the reference notes);
where a count changes with the class count or input size, the expected delta is worked out by hand
in a comment.
"""

import functools

import keras
import numpy as np
import pytest

from moth_tf import models
from moth_tf.models import resnet

CIFAR = (32, 32, 3)
DIGITS = (8, 8, 1)
FASHION = (28, 28, 1)
CIFAR_NORM = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


# Building resnet110 and vgg19 takes seconds, so tests that only read a model share one build.
# Tests that change weights build their own.
@functools.lru_cache(maxsize=None)
def _shared_model(name, input_shape, num_classes):
  return models.build_model(name, input_shape, num_classes)


def _trainable_count(model):
  return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def _images(input_shape, batch=2, seed=0):
  return np.random.default_rng(seed).uniform(size=(batch, *input_shape)).astype("float32")


@pytest.mark.parametrize("name, input_shape, num_classes, total, trainable", [
    ("resnet20", CIFAR, 10, 274_442, 273_066),
    ("resnet32", CIFAR, 10, 470_218, None),
    ("resnet56", CIFAR, 10, 861_770, None),
    ("resnet110", CIFAR, 10, 1_742_762, None),
    ("vgg19", CIFAR, 10, 39_002_738, 38_975_326),
    ("nin", CIFAR, 10, 966_986, 966_986),
    ("cnn", CIFAR, 18, 726_354, 726_354),
    ("lenet", DIGITS, 10, 151_306, 151_306),
    ("small_cnn", FASHION, 10, 98_442, 98_442),
])
def test_parameter_counts(name, input_shape, num_classes, total, trainable):
  model = _shared_model(name, input_shape, num_classes)
  assert model.count_params() == total
  if trainable is not None:
    assert _trainable_count(model) == trainable


def test_vgg19_is_about_39m_parameters():
  assert abs(_shared_model("vgg19", CIFAR, 10).count_params() - 39.0e6) <= 0.1e6


@pytest.mark.parametrize("name, input_shape, num_classes", [
    ("resnet20", CIFAR, 10),
    ("resnet32", CIFAR, 10),
    ("resnet56", CIFAR, 10),
    ("resnet110", CIFAR, 10),
    ("vgg19", CIFAR, 10),
    ("nin", CIFAR, 10),
    ("cnn", CIFAR, 18),
    ("lenet", DIGITS, 10),
    ("small_cnn", FASHION, 10),
])
def test_outputs_one_logit_per_class(name, input_shape, num_classes):
  model = _shared_model(name, input_shape, num_classes)
  assert model.name == name
  logits = np.asarray(model(_images(input_shape, batch=3), training=False))
  assert logits.shape == (3, num_classes)
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name, input_shape, extra_params", [
    # Only the last Dense grows by (fan_in + 1) per extra class; vgg19 also has a BN on its logits
    # (4 weights per class).
    ("resnet20", CIFAR, 33 * (64 + 1)),
    ("vgg19", CIFAR, 33 * (4096 + 1) + 33 * 4),
    ("nin", CIFAR, 33 * (192 + 1)),
    ("cnn", CIFAR, 33 * (512 + 1)),
    ("lenet", DIGITS, 33 * (128 + 1)),
])
def test_other_class_counts(name, input_shape, extra_params):
  ten = _shared_model(name, input_shape, 10)
  model = models.build_model(name, input_shape, 43)
  assert model.count_params() == ten.count_params() + extra_params
  assert model(_images(input_shape), training=False).shape == (2, 43)


@pytest.mark.parametrize("name", ["resnet20", "nin", "lenet"])
def test_small_grayscale_inputs(name):
  model = _shared_model(name, DIGITS, 10)
  assert model(_images(DIGITS), training=False).shape == (2, 10)


@pytest.mark.parametrize("name, input_shape, minimum", [
    ("vgg19", DIGITS, 32),
    ("vgg19", (31, 32, 3), 32),
    ("cnn", DIGITS, 27),
    ("cnn", (26, 26, 3), 27),
])
def test_too_small_inputs_raise_a_clear_error(name, input_shape, minimum):
  with pytest.raises(ValueError, match=rf"at least {minimum}x{minimum}.*--image_size=32") as info:
    models.build_model(name, input_shape, 10)
  assert "\n" not in str(info.value)


def test_cnn_smallest_input_works():
  model = models.build_model("cnn", (27, 27, 3), 18)
  assert model.get_layer("conv3").output.shape[1:3] == (1, 1)


@pytest.mark.parametrize("name, input_shape", [
    ("resnet20", CIFAR), ("vgg19", CIFAR), ("nin", CIFAR), ("cnn", CIFAR), ("lenet", DIGITS),
])
def test_normalization_is_the_first_layer(name, input_shape):
  channels = input_shape[-1]
  mean, std = CIFAR_NORM[0][:channels], CIFAR_NORM[1][:channels]
  model = models.build_model(name, input_shape, 10, normalization=(mean, std))
  first = model.layers[1]  # layers[0] is the InputLayer.
  assert isinstance(first, keras.layers.Normalization)
  x = _images(input_shape)
  normalised = keras.Model(model.input, first.output)(x)
  np.testing.assert_allclose(normalised, (x - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-5)
  # Without normalisation there is none anywhere.
  plain = _shared_model(name, input_shape, 10)
  assert not any(isinstance(l, keras.layers.Normalization) for l in plain.layers)


@pytest.mark.parametrize("name, input_shape, normalization", [
    ("lenet", DIGITS, ((0.5,), (0.25,))),
    ("resnet20", CIFAR, CIFAR_NORM),
])
def test_keras_round_trip(tmp_path, name, input_shape, normalization):
  model = models.build_model(name, input_shape, 10, normalization=normalization)
  # Fresh BN statistics are 0 and 1; random ones make sure they are saved too.
  rng = np.random.default_rng(1)
  for variable in model.non_trainable_weights:
    variable.assign(rng.uniform(0.5, 1.5, size=variable.shape).astype("float32"))
  path = str(tmp_path / f"{name}.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.name == name
  assert isinstance(loaded.layers[1], keras.layers.Normalization)
  x = _images(input_shape, batch=4)
  np.testing.assert_array_equal(np.asarray(loaded(x, training=False)),
                                np.asarray(model(x, training=False)))


def _resnet20_weighted_layer_names():
  """The authors' creation order: stem, per block bn1 conv1 bn2 conv2 [shortcut], head BN, Dense."""
  names = ["stem_conv"]
  for stage in (1, 2, 3):
    for block in (1, 2, 3):
      prefix = f"stage{stage}_block{block}"
      names += [f"{prefix}_bn1", f"{prefix}_conv1", f"{prefix}_bn2", f"{prefix}_conv2"]
      if stage > 1 and block == 1:
        names.append(f"{prefix}_shortcut")
  return names + ["head_bn", "logits"]


def test_resnet20_layer_order_matches_the_authors_h5():
  # Legacy .h5 weights are assigned to the weighted layers in topological order; the authors' file
  # has 21 convs and 19 BNs in creation order, the projections right after each block's second conv.
  model = _shared_model("resnet20", CIFAR, 10)
  weighted = [layer for layer in model.layers if layer.weights]
  assert [layer.name for layer in weighted] == _resnet20_weighted_layer_names()
  assert sum(isinstance(l, keras.layers.Conv2D) for l in weighted) == 21
  assert sum(isinstance(l, keras.layers.BatchNormalization) for l in weighted) == 19


def test_resnet_block_wiring():
  model = _shared_model("resnet20", CIFAR, 10)
  # Projection shortcuts read the pre-activated input and halve the resolution.
  for prefix in ("stage2_block1", "stage3_block1"):
    shortcut = model.get_layer(f"{prefix}_shortcut")
    assert shortcut.input is model.get_layer(f"{prefix}_relu1").output
    assert shortcut.kernel_size == (1, 1) and shortcut.strides == (2, 2)
    assert model.get_layer(f"{prefix}_conv1").strides == (2, 2)
  # Identity shortcuts add the raw block input; the first one is the stem conv (no stem BN).
  first_add = model.get_layer("stage1_block1_add")
  assert first_add.input[1] is model.get_layer("stem_conv").output
  assert model.get_layer("stage1_block2_add").input[1] is first_add.output
  # Pre-activation: nothing but the head's BN follows the last addition.
  assert model.get_layer("head_bn").input is model.get_layer("stage3_block3_add").output


def test_resnet_regularisation_and_batchnorm_settings():
  model = _shared_model("resnet20", CIFAR, 10)
  assert len(model.losses) == 22  # One L2 term per conv (21) and dense (1) kernel.
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      assert layer.momentum == pytest.approx(0.9) and layer.epsilon == pytest.approx(1e-5)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
      assert isinstance(layer.kernel_initializer, keras.initializers.HeNormal)
      assert layer.use_bias


@pytest.mark.parametrize("depth", [0, 2, 15, 21])
def test_resnet_rejects_bad_depths(depth):
  with pytest.raises(ValueError, match="6\\*n\\+2"):
    resnet.resnet(depth, CIFAR, 10)


def test_vgg19_keeps_the_batchnorm_on_its_logits():
  model = _shared_model("vgg19", CIFAR, 10)
  assert isinstance(model.layers[-1], keras.layers.BatchNormalization)
  assert model.layers[-2].name == "predictions_cifa10"
  assert model.get_layer("block5_pool").output.shape[1:] == (1, 1, 512)
  assert len(model.losses) == 16 + 3  # L2 on every conv and dense kernel.
  batchnorm = model.get_layer("block1_bn1")
  assert batchnorm.momentum == pytest.approx(0.99) and batchnorm.epsilon == pytest.approx(1e-3)


def test_nin_logits_are_non_negative():
  model = _shared_model("nin", CIFAR, 10)
  logits = np.asarray(model(_images(CIFAR, batch=8), training=False))
  assert np.all(logits >= 0.0)
  assert len(model.losses) == 9
  assert not any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)


def test_cnn_is_unregularised():
  model = _shared_model("cnn", CIFAR, 18)
  assert not model.losses
  assert model.get_layer("flatten").output.shape[1:] == (512,)


def test_unknown_model_name():
  with pytest.raises(ValueError, match="unknown model"):
    models.build_model("resnet18", CIFAR, 10)
