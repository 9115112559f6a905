"""moth_tf: MOTH class-distance hardening (Tao et al., IEEE S&P 2022) in TensorFlow 2 / Keras 3."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent

setuptools.setup(
    name="moth_tf",
    version="0.1.0",
    description="Model Orthogonalization (MOTH) class-distance hardening for Keras classifiers",
    long_description=(_HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["moth_tf", "moth_tf.*"]),
    python_requires=">=3.10",
    # keras>=3.8 is the first release that scales compiled losses by the replica count under
    # tf.distribute. The upper bound is the newest minor version the tests ran on (TF 2.21 / Keras
    # 3.15.1): moth_tf patches Keras internals (all of them in moth_tf/_compat.py, which fails in
    # one line naming the fix when a Keras lacks them), and a new minor release may move them.
    # Keep it in step with moth_tf._compat.KERAS_RANGE.
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.8,<3.16",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets imports importlib_resources whenever it downloads and prepares a data
        # set (cifar10, svhn on first use) but declares it only for Python < 3.9.
        "importlib_resources",
        "absl-py>=1.0",
        "numpy>=1.23",
        "scikit-learn>=1.0",
        "tensorboard>=2.16",
        # The labelled distance heat map and Neural Cleanse figure of every run, and the report's
        # figures (python -m moth_tf.report).
        "matplotlib>=3.6",
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        # Kept so that old install commands (pip install -e ".[report]") still work: matplotlib,
        # which it used to add, is a core dependency now.
        "report": [],
        # tf_keras makes the Keras 2 SavedModels that tests/test_model_io.py fine-tunes (those tests
        # are skipped without it); each release requires the TensorFlow of the same version.
        "test": ["pytest>=7", "tf_keras"],
    },
    entry_points={"console_scripts": ["moth_tf=moth_tf.cli.main:run_main"]},
)
