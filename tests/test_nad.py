"""Tests of `--method=nad` (moth_tf.baselines.nad): Neural Attention Distillation.

* The attention map and the AT loss against values worked out by hand.
* The clean subset: per class round(share x count) images, stratified and seeded.
* Layer defaults for every architecture of moth_tf.models, NAD's betas scaled to the map sizes, and
  the one-line errors for unknown or non-4-D layers.
* The student's step on a tiny conv classifier (4x4 grey images, one named conv): with betas 0 it is
  the fine-tuning step; with betas > 0 its loss is CE plus the hand-computed distillation term.
  The same steps under MirroredStrategy on two logical CPU devices (in a subprocess).
* Through the command line: a digits LeNet trained for 2 epochs, then `--phase=harden --method=nad`
  with 1 teacher epoch and 3 student epochs; a resumed run reuses the finished teacher.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf import data as data_lib
from moth_tf import models
from moth_tf.baselines import nad
from moth_tf.hardening import fitting
from moth_tf.hardening import model as model_lib
from moth_tf.models import io as model_io

from cli_testing import copied_workdir  # pylint: disable=g-bad-import-order
from cli_testing import event_files
from cli_testing import parsed_config
from cli_testing import run_cli
from test_cli import run_cli_error

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHAPE = (4, 4, 1)
_N = 3


# -------------------------------------------------------------------------------------------------
# Attention map and AT loss, by hand.


def _activation():
  """[1, 2, 2, 2]: positions (0,0) [1, 3], (0,1) [2, 0], (1,0) [0, 0], (1,1) [-2, 2]."""
  return np.array([[[[1.0, 3.0], [2.0, 0.0]], [[0.0, 0.0], [-2.0, 2.0]]]], np.float32)


def test_attention_map_is_the_normalised_channel_mean_of_the_powered_magnitudes():
  # p = 2: channel means of squares 5, 2, 0, 4; norm sqrt(25 + 4 + 0 + 16) = sqrt(45).
  np.testing.assert_allclose(nad.attention_map(_activation(), 2.0).numpy(),
                             [[5 / 45 ** 0.5, 2 / 45 ** 0.5, 0.0, 4 / 45 ** 0.5]], rtol=1e-6)
  # p = 1: channel means of |A| 2, 1, 0, 2; norm 3 (the sign of -2 does not matter).
  np.testing.assert_allclose(nad.attention_map(_activation(), 1.0).numpy(),
                             [[2 / 3, 1 / 3, 0.0, 2 / 3]], rtol=1e-6)
  # Row by row, flattened per image: a second image is normalised on its own.
  batch = np.concatenate([_activation(), 2 * _activation()[:, ::-1]])
  maps = nad.attention_map(batch, 2.0).numpy()
  assert maps.shape == (2, 4)
  np.testing.assert_allclose(np.linalg.norm(maps, axis=1), [1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(maps[1], [0.0, 4 / 45 ** 0.5, 5 / 45 ** 0.5, 2 / 45 ** 0.5],
                             rtol=1e-6)
  # An all-zero map stays zero (no NaN), and its gradient is finite even for p < 1.
  zeros = tf.zeros([1, 2, 2, 3])
  with tf.GradientTape() as tape:
    tape.watch(zeros)
    out = nad.attention_map(zeros, 0.5)
  assert np.all(out.numpy() == 0.0)
  assert np.all(np.isfinite(tape.gradient(out, zeros).numpy()))


def test_attention_loss_is_the_mean_squared_difference_of_the_maps():
  a = _activation()
  assert float(nad.attention_loss(a, a)) == 0.0
  # Scaling an activation leaves its normalised map unchanged.
  assert float(nad.attention_loss(a, 3.0 * a)) == pytest.approx(0.0, abs=1e-12)
  # Student attends only to position 0, teacher only to position 1: maps [1,0,0,0] and [0,1,0,0],
  # squared differences 1, 1, 0, 0, mean over 1 image x 4 positions = 0.5.
  student = np.zeros((1, 2, 2, 2), np.float32)
  teacher = np.zeros((1, 2, 2, 2), np.float32)
  student[0, 0, 0] = [1.0, 2.0]
  teacher[0, 0, 1] = [0.0, -4.0]
  assert float(nad.attention_loss(student, teacher)) == pytest.approx(0.5)
  # With _activation as the teacher: (1 - 5/sqrt45)^2 + (2/sqrt45)^2 + (4/sqrt45)^2, over 4; and a
  # batch of the two pairs averages the two images.
  r = 45 ** 0.5
  expected = ((1 - 5 / r) ** 2 + (2 / r) ** 2 + (4 / r) ** 2) / 4
  assert float(nad.attention_loss(student, a)) == pytest.approx(expected, rel=1e-6)
  both = nad.attention_loss(np.concatenate([student, student]), np.concatenate([teacher, a]))
  assert float(both) == pytest.approx((0.5 + expected) / 2, rel=1e-6)
  # No gradient flows into the teacher.
  t = tf.Variable(a)
  s = tf.Variable(a + 0.5)
  with tf.GradientTape() as tape:
    loss = nad.attention_loss(s, t)
  grad_s, grad_t = tape.gradient(loss, [s, t])
  assert grad_t is None and float(tf.reduce_max(tf.abs(grad_s))) > 0


# -------------------------------------------------------------------------------------------------
# The clean subset.


def _splits(counts=(40, 23, 7, 100), seed=0):
  rng = np.random.default_rng(seed)
  y = rng.permutation(np.concatenate([[c] * n for c, n in enumerate(counts)])).astype(np.int64)
  x = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1, 1) * np.ones((1, 2, 2, 1), np.float32)
  info = data_lib.DatasetInfo(name="toy", num_classes=len(counts), image_shape=(2, 2, 1),
                              class_names=tuple(map(str, range(len(counts)))))
  return data_lib.DatasetSplits(info, x, y, x[:5], y[:5], x[:7], y[:7])


@pytest.mark.parametrize("share", [0.05, 0.1, 0.5, 1.0])
def test_clean_subset_is_stratified_and_seeded(share):
  counts = (40, 23, 7, 100)
  splits = _splits(counts)
  clean = nad.clean_subset(splits, share, seed=3)
  # Per class np.round(share x count) (stratified_split's rule; NumPy rounds halves to even).
  expected = [int(np.round(share * n)) for n in counts]
  assert np.bincount(clean.y_train, minlength=4).tolist() == expected
  assert len(clean.x_train) == sum(expected)
  # The images are the ones of those labels (x holds each image's index), without repeats.
  index = clean.x_train[:, 0, 0, 0].astype(int)
  assert len(set(index)) == len(index)
  np.testing.assert_array_equal(splits.y_train[index], clean.y_train)
  # Validation and test are kept whole.
  assert clean.x_val is splits.x_val and clean.x_test is splits.x_test
  # Seeded: the same seed draws the same images, another seed others (unless it takes them all).
  again = nad.clean_subset(splits, share, seed=3)
  np.testing.assert_array_equal(again.x_train, clean.x_train)
  other = nad.clean_subset(splits, share, seed=4)
  assert (share == 1.0) == np.array_equal(other.x_train, clean.x_train)


def test_clean_subset_that_rounds_to_nothing_is_an_error():
  with pytest.raises(ValueError, match="--nad_clean_share=0.01 of 11 training images"):
    nad.clean_subset(_splits((5, 6)), 0.01, seed=0)


# -------------------------------------------------------------------------------------------------
# Layers and betas.


def test_default_betas_keep_nads_weight_per_position():
  # WRN's maps on CIFAR: NAD's own betas.
  assert nad.default_betas([32 * 32, 16 * 16, 8 * 8]) == pytest.approx((500.0, 1000.0, 1000.0))
  # Two layers take NAD's last two groups' weights (1000/256 and 1000/64 per position): LeNet on
  # 8x8 digits has maps of 8x8 and 4x4.
  assert nad.default_betas([64, 16]) == pytest.approx((250.0, 250.0))
  # Small-CNN on 28x28: 784 x 500/1024, 196 x 1000/256, 49 x 1000/64.
  assert nad.default_betas([784, 196, 49]) == pytest.approx((382.8125, 765.625, 765.625))
  # A fourth, shallower layer takes the first group's weight.
  assert nad.default_betas([1024, 1024, 256, 64]) == pytest.approx((500, 500, 1000, 1000))


# (architecture, input shape, expected default layers, their maps' H x W).
_ARCHITECTURES = [
    ("lenet", (8, 8, 1), ("conv1", "conv2"), (8, 4)),
    ("small_cnn", (28, 28, 1), ("conv1", "conv2", "conv3"), (28, 14, 7)),
    ("cnn", (32, 32, 3), ("conv1", "conv2", "conv3"), (16, 6, 2)),
    ("nin", (32, 32, 3), ("block1_mlp2", "block2_mlp2", "block3_mlp1"), (32, 16, 8)),
    ("vgg19", (32, 32, 3), ("block3_relu4", "block4_relu4", "block5_relu4"), (8, 4, 2)),
    ("resnet20", (32, 32, 3),
     ("stage1_block3_add", "stage2_block3_add", "stage3_block3_add"), (32, 16, 8)),
    ("resnet32", (16, 16, 3),
     ("stage1_block5_add", "stage2_block5_add", "stage3_block5_add"), (16, 8, 4)),
]


def test_every_architecture_has_default_layers():
  covered = {name for name, *_ in _ARCHITECTURES}
  for name in models.MODELS:
    layers = nad.default_layers(name)
    assert layers, name
    if name not in covered:  # The deeper ResNets: the last block of each stage.
      blocks = (int(name[len("resnet"):]) - 2) // 6
      assert layers == tuple(f"stage{s}_block{blocks}_add" for s in (1, 2, 3))


@pytest.mark.parametrize("name,shape,layers,sides", _ARCHITECTURES)
def test_default_layers_resolve_on_the_built_model(name, shape, layers, sides):
  classifier = models.build_model(name, shape, 10)
  got_layers, betas = nad.resolve_layers(classifier)
  assert got_layers == layers
  for layer, side in zip(layers, sides):
    out = classifier.get_layer(layer).output.shape
    assert len(out) == 4 and tuple(out[1:3]) == (side, side), (layer, out)
  assert betas == pytest.approx(nad.default_betas([s * s for s in sides]))
  # Explicit betas are kept as given.
  assert nad.resolve_layers(classifier, None, [1] * len(layers))[1] == (1.0,) * len(layers)


def test_resolve_layers_by_layer_names_when_the_model_is_renamed():
  classifier = models.build_model("lenet", (8, 8, 1), 10)
  renamed = keras.Model(classifier.input, classifier.output, name="my_model")
  assert nad.resolve_layers(renamed)[0] == ("conv1", "conv2")


def _tiny(name="tiny", seed=0):
  keras.utils.set_random_seed(seed)
  inputs = keras.Input(_SHAPE, name="image")
  x = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="conv")(inputs)
  x = keras.layers.Flatten(name="flatten")(x)
  return keras.Model(inputs, keras.layers.Dense(_N, name="logits")(x), name=name)


def test_resolve_layers_errors_name_the_flag_and_the_models_layers():
  classifier = _tiny()
  # No defaults for an unknown architecture.
  with pytest.raises(ValueError) as info:
    nad.resolve_layers(classifier)
  message = str(info.value)
  assert "--nad_layers" in message and "'tiny'" in message and "conv" in message
  assert "\n" not in message
  # An unknown layer; a layer without a 4-D output; betas of the wrong length.
  with pytest.raises(ValueError, match=r"--nad_layers: model 'tiny' has no layer 'nope'.*conv"):
    nad.resolve_layers(classifier, ["conv", "nope"])
  with pytest.raises(ValueError, match=r"'flatten'.*not a 4-D feature map.*conv"):
    nad.resolve_layers(classifier, ["flatten"])
  with pytest.raises(ValueError, match="--nad_betas has 2 weight"):
    nad.resolve_layers(classifier, ["conv"], [1.0, 2.0])
  # A lenet whose defaults are asked for with too few betas.
  with pytest.raises(ValueError, match="--nad_betas has 1 weight.*conv1, conv2"):
    nad.resolve_layers(models.build_model("lenet", (8, 8, 1), 10), None, [5.0])


def test_config_validates_the_nad_fields():
  config_lib.harden_config(nad_layers=("a", "b"), nad_betas=(0.0, 2.0))
  for kwargs, match in (
      ({"nad_clean_share": 0.0}, "nad_clean_share must be in"),
      ({"nad_clean_share": 1.5}, "nad_clean_share must be in"),
      ({"nad_teacher_epochs": 0}, "nad_teacher_epochs must be >= 1"),
      ({"nad_epochs": 0}, "nad_epochs must be >= 1"),
      ({"nad_power": 0.0}, "nad_power must be > 0"),
      ({"nad_layers": ()}, "nad_layers must name"),
      ({"nad_betas": (1.0, -1.0)}, "nad_betas must be >= 0"),
      ({"nad_layers": ("a",), "nad_betas": (1.0, 2.0)}, "nad_betas has 2 weight"),
  ):
    with pytest.raises(ValueError, match=match):
      config_lib.harden_config(**kwargs)


def test_flags_become_the_config_fields():
  harden = parsed_config("--nad_clean_share=0.1", "--nad_teacher_epochs=2", "--nad_epochs=4",
                         "--nad_power=1.5", "--nad_layers=conv1,conv2",
                         "--nad_betas=10,2e2").harden
  assert (harden.nad.clean_share, harden.nad.teacher_epochs, harden.nad.epochs,
          harden.nad.power) == (0.1, 2, 4, 1.5)
  assert harden.nad.layers == ("conv1", "conv2") and harden.nad.betas == (10.0, 200.0)
  default = parsed_config().harden
  assert (default.nad.clean_share, default.nad.teacher_epochs, default.nad.epochs,
          default.nad.power, default.nad.layers, default.nad.betas) == (0.05, 10, 20, 2.0, None,
                                                                       None)
  from absl import flags
  with pytest.raises(flags.IllegalFlagValueError,
                     match="--nad_betas=1,abc: give comma-separated numbers >= 0"):
    parsed_config("--nad_betas=1,abc")


# -------------------------------------------------------------------------------------------------
# The student's step.


def _compile(model):
  model.compile(optimizer=keras.optimizers.SGD(0.5),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def _data(b=8):
  rng = np.random.default_rng(1)
  return rng.random((b,) + _SHAPE).astype(np.float32), rng.integers(0, _N, b)


def _student(betas, teacher_seed):
  teacher = _tiny(seed=teacher_seed)
  return _compile(nad.NADModel(_tiny(seed=0), _N, teacher, ["conv"], betas))


def test_student_step_with_betas_zero_is_the_fine_tuning_step():
  x, y = _data()
  plain = _compile(model_lib.HardeningModel(_tiny(seed=0), _N))
  student = _student([0.0], teacher_seed=5)
  plain_loss = plain.train_on_batch(x, y, return_dict=True)["loss"]
  logs = student.train_on_batch(x, y, return_dict=True)
  assert logs["loss"] == pytest.approx(plain_loss, rel=1e-6)
  assert logs["attention_loss"] == 0.0
  for a, b in zip(student.classifier.get_weights(), plain.classifier.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_student_loss_adds_the_weighted_attention_loss_and_trains_only_the_student():
  x, y = _data()
  beta = 40.0
  student = _student([beta], teacher_seed=5)
  teacher_before = student.teacher.get_weights()
  student_before = student.classifier.get_weights()
  # The term before the step, from the two conv activations (the teacher in inference mode).
  conv_s = keras.Model(student.classifier.input, student.classifier.get_layer("conv").output)
  conv_t = keras.Model(student.teacher.input, student.teacher.get_layer("conv").output)
  at = float(nad.attention_loss(conv_s(x), conv_t(x)))
  assert at > 1e-4  # Different initialisations attend differently.
  plain = _compile(model_lib.HardeningModel(_tiny(seed=0), _N))
  plain_loss = plain.train_on_batch(x, y, return_dict=True)["loss"]
  logs = student.train_on_batch(x, y, return_dict=True)
  assert logs["attention_loss"] == pytest.approx(beta * at, rel=1e-5)
  assert logs["loss"] == pytest.approx(plain_loss + beta * at, rel=1e-5)
  # The gradient has the distillation term: the step differs from fine-tuning's.
  diff = max(float(np.abs(a - b).max())
             for a, b in zip(student.classifier.get_weights(), plain.classifier.get_weights()))
  assert diff > 1e-4
  # The teacher is frozen; the student moved.
  assert student.teacher.trainable_weights == []
  for a, b in zip(student.teacher.get_weights(), teacher_before):
    np.testing.assert_array_equal(a, b)
  assert any(np.abs(a - b).max() > 0 for a, b in
             zip(student.classifier.get_weights(), student_before))
  # Same teacher as student: no distillation term.
  same = _student([beta], teacher_seed=0)
  logs = same.train_on_batch(x, y, return_dict=True)
  assert logs["attention_loss"] == pytest.approx(0.0, abs=1e-7)
  assert logs["loss"] == pytest.approx(plain_loss, rel=1e-6)


def test_student_variables_are_the_classifiers_once():
  student = _student([1.0], teacher_seed=5)
  student(np.zeros((1,) + _SHAPE, np.float32))
  assert len(student.trainable_variables) == len(student.classifier.trainable_variables) == 4
  # Validation is plain CE: the attention tracker is not in evaluate's logs.
  x, y = _data()
  logs = student.evaluate(x, y, verbose=0, return_dict=True)
  assert "attention_loss" not in logs


# MirroredStrategy on 2 logical CPU devices, in a subprocess (devices must be split before TF
# initialises them).
_MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    from moth_tf import distribute
    distribute.split_cpu(2)

    import keras
    import numpy as np
    import tensorflow as tf

    from moth_tf.baselines import nad

    def tiny(seed):
      keras.utils.set_random_seed(seed)
      inputs = keras.Input((4, 4, 1))
      h = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="conv")(inputs)
      h = keras.layers.Flatten()(h)
      return keras.Model(inputs, keras.layers.Dense(3)(h), name="tiny")

    init_s, init_t = tiny(0).get_weights(), tiny(5).get_weights()
    rng = np.random.default_rng(1)
    x = rng.random((32, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 32)

    def run(strategy):
      with strategy.scope():
        s, t = tiny(0), tiny(5)
        s.set_weights(init_s)
        t.set_weights(init_t)
        m = nad.NADModel(s, 3, t, ["conv"], [10.0])
        m.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
      history = m.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
      return m, history.history

    strategy = distribute.get_strategy("mirrored")
    (single, h1), (mirror, h2) = run(tf.distribute.get_strategy()), run(strategy)
    print("RESULT " + json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "weight_diff": max(float(np.abs(a - b).max()) for a, b in
                           zip(single.classifier.get_weights(), mirror.classifier.get_weights())),
        "loss": [h1["loss"], h2["loss"]],
        "attention": [h1["attention_loss"], h2["attention_loss"]]}))
""")


def test_student_under_mirrored_strategy_matches_one_device(tmp_path):
  script = tmp_path / "mirrored.py"
  script.write_text(_MIRRORED_SCRIPT)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
      p for p in (_REPO, os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                        timeout=300, env=env, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert len(lines) == 1, proc.stdout[-2000:]
  out = json.loads(lines[0][len("RESULT "):])
  assert out["replicas"] == 2
  # The distillation term is scaled per replica like the CE: same weights, same logged losses
  # (without the scaling the weights differ by about 0.08 here).
  assert out["weight_diff"] < 1e-5
  np.testing.assert_allclose(out["loss"][0], out["loss"][1], rtol=1e-5)
  np.testing.assert_allclose(out["attention"][0], out["attention"][1], rtol=1e-5)
  assert min(out["attention"][0]) > 0


# -------------------------------------------------------------------------------------------------
# The command line and the library run.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits_trained_2_epochs):
  """A workdir with a digits LeNet trained for 2 epochs by --phase=train (the session's
  `digits_trained_2_epochs`, tests/conftest.py, copied: the tests below write into it)."""
  return copied_workdir(digits_trained_2_epochs[0], tmp_path_factory)


def test_cli_nad_changes_the_weights_and_writes_the_outputs(workdir, capsys):
  base_path = os.path.join(workdir, "digits_lenet_natural", "model.keras")
  capsys.readouterr()
  run_cli("--phase=harden", "--method=nad", f"--workdir={workdir}", "--nad_teacher_epochs=1",
          "--nad_epochs=3", "--nad_clean_share=0.1")
  out = capsys.readouterr().out
  assert "NAD on a 10% clean subset" in out
  run_dir = os.path.join(workdir, "digits_lenet_nad")
  assert os.path.isfile(os.path.join(run_dir, "model.keras"))
  assert os.path.isfile(os.path.join(run_dir, "saved_model", "saved_model.pb"))
  assert event_files(os.path.join(run_dir, "logs", "harden"))
  assert event_files(os.path.join(run_dir, "logs", "harden_teacher"))
  # The resumable state is gone after success.
  for name in ("backup_harden", "backup_harden_teacher", nad.TEACHER_WEIGHTS, nad.TEACHER_RECORD):
    assert not os.path.exists(os.path.join(run_dir, name)), name
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)
  harden = summary["harden"]
  assert summary["method"] == harden["method"] == "nad"
  info = harden["nad"]
  # 10% of each digit class (about 125 training images each): 126 images, 1 step of 128 per epoch.
  counts = np.bincount(data_lib.load_dataset("digits").y_train)
  clean = sum(int(np.round(0.1 * n)) for n in counts)
  assert info["clean_images"] == clean
  assert info["layers"] == ["conv1", "conv2"]
  assert info["betas"] == pytest.approx([250.0, 250.0])
  assert (info["power"], info["teacher_epochs"], info["epochs"]) == (2.0, 1, 3)
  steps_per_epoch = -(-clean // 128)
  assert harden["steps"] == 3 * steps_per_epoch and harden["steps_per_epoch"] == steps_per_epoch
  assert info["teacher_steps"] == steps_per_epoch
  assert 0 < info["teacher_seconds"] < harden["wall_seconds"]
  assert info["final_attention_loss"] is not None and info["final_attention_loss"] >= 0
  assert 0.5 < harden["test_accuracy_after"] <= 1.0
  base = model_io.load_model(base_path)
  hardened = model_io.load_model(os.path.join(run_dir, "model.keras"))
  change = max(float(np.abs(a - b).max())
               for a, b in zip(hardened.get_weights(), base.get_weights()))
  assert change > 1e-4


def test_cli_unknown_layer_is_a_one_line_error(workdir, capsys):
  err = run_cli_error(capsys, "--phase=harden", "--method=nad", f"--workdir={workdir}",
                      "--nad_layers=conv1,nope", "--overwrite")
  assert "--nad_layers" in err and "'nope'" in err and "conv2" in err


def test_unusable_layers_fail_before_anything_is_written(workdir, tmp_path, capsys):
  other = tmp_path / "other"
  base_path = os.path.join(workdir, "digits_lenet_natural", "model.keras")
  err = run_cli_error(capsys, "--phase=harden", "--method=nad", f"--model_path={base_path}",
                      f"--workdir={other}", "--nad_layers=nope")
  assert "'nope'" in err
  assert not other.exists()  # No run directory, no logs: the check runs before any output.


def test_a_killed_run_reuses_its_finished_teacher(workdir, tmp_path, monkeypatch, capsys):
  base_path = os.path.join(workdir, "digits_lenet_natural", "model.keras")
  splits = data_lib.load_dataset("digits")
  config = config_lib.harden_config(nad_clean_share=0.1, nad_teacher_epochs=2, nad_epochs=1,
                                   learning_rate=1e-3)
  run_dir = str(tmp_path / "run")
  factory = lambda: model_io.load_model(base_path)  # pylint: disable=unnecessary-lambda-assignment
  real_fit = fitting.fit_hardening

  def killed_student(model, *args, name="harden", **kwargs):
    if name == "harden":
      raise KeyboardInterrupt  # The process dies as the student starts.
    return real_fit(model, *args, name=name, **kwargs)

  monkeypatch.setattr(fitting, "fit_hardening", killed_student)
  with pytest.raises(KeyboardInterrupt):
    nad.harden(factory, splits, config, run_dir, verbose=0)
  record = json.loads((tmp_path / "run" / nad.TEACHER_RECORD).read_text())
  assert record["steps"] == 2 and record["seconds"] > 0
  teacher_file = tmp_path / "run" / nad.TEACHER_WEIGHTS
  assert teacher_file.exists()

  calls = []

  def counting_fit(model, *args, name="harden", **kwargs):
    calls.append(name)
    return real_fit(model, *args, name=name, **kwargs)

  monkeypatch.setattr(fitting, "fit_hardening", counting_fit)
  capsys.readouterr()
  _, results = nad.harden(factory, splits, config, run_dir, verbose=1)
  assert calls == ["harden"]  # Only the student trained.
  assert "reusing" in capsys.readouterr().out
  assert results["nad"]["teacher_seconds"] == pytest.approx(record["seconds"])
  assert results["nad"]["teacher_steps"] == 2
  assert not teacher_file.exists()
  # Another teacher setting does not reuse a stale record: it trains its own teacher.
  (tmp_path / "run" / nad.TEACHER_RECORD).write_text(json.dumps(record))
  teacher_file.write_bytes(b"stale")
  calls.clear()
  changed = config_lib.harden_config(nad_clean_share=0.1, nad_teacher_epochs=1, nad_epochs=1,
                                    learning_rate=1e-3)
  _, results = nad.harden(factory, splits, changed, run_dir, verbose=0)
  assert calls == [nad.TEACHER_FIT_NAME, "harden"]
  assert results["nad"]["teacher_steps"] == 1
