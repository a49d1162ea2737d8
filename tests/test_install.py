"""What a fresh install must give: every declared dependency present and working.

These tests fail, never skip, when a declared dependency is missing or broken:
a skip would let CI go green while a user's `pip install` gives a package whose
TF-Hub or TFDS features do not work.
"""

import configparser
import importlib.metadata
import os
import subprocess
import sys

import local_tfds.shades  # noqa: F401  (registers bit_keras_local_shades)
import numpy as np
from packaging.requirements import Requirement

from bit_keras import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def declared(section, key):
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    lines = config[section][key].splitlines()
    return [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]


def test_every_declared_dependency_is_installed_at_a_declared_version():
    requirements = declared("options", "install_requires") + declared("options.extras_require", "test")
    problems = []
    for requirement in requirements:
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name} {version} does not satisfy {requirement}")
    assert not problems, "; ".join(problems)


def test_tensorflow_hub_imports_in_a_fresh_interpreter():
    # tensorflow-hub imports pkg_resources, gone from setuptools 81+: setup.cfg pins it.
    result = subprocess.run(
        [sys.executable, "-c", "import tensorflow_hub, pkg_resources; print(tensorflow_hub.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _run_python(code, **env):
    """`code` in a fresh interpreter, with TensorFlow's own oneDNN default unless `env` sets it, and every log line."""
    environ = {key: value for key, value in os.environ.items() if key not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environ, "TF_CPP_MIN_LOG_LEVEL": "0", **env},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_importing_bit_keras_turns_onednn_kernels_on():
    # TensorFlow itself turns them on only on CPUs with AVX-512 VNNI/BF16 or AMX.
    assert "oneDNN custom operations are on" in _run_python("import bit_keras").stderr


def test_a_users_onednn_choice_is_kept():
    assert "oneDNN custom operations are on" not in _run_python("import bit_keras", TF_ENABLE_ONEDNN_OPTS="0").stderr


def test_tensorflow_imported_first_without_onednn_is_warned_about():
    code = "import tensorflow; import bit_keras; from bit_keras import _startup; print(_startup.onednn_enabled())"
    assert "Import bit_keras before keras" not in _run_python(code, TF_ENABLE_ONEDNN_OPTS="0").stderr  # the user chose
    probe = _run_python(code)
    if probe.stdout.split()[-1] == "False":  # this CPU's TensorFlow default is off
        assert "Import bit_keras before keras" in probe.stderr
    else:
        assert "Import bit_keras before keras" not in probe.stderr


def test_a_tfds_dataset_is_prepared_and_read_with_from_tfds(tmp_path):
    # Preparing imports importlib_resources, which tensorflow-datasets does not declare.
    train = data.from_tfds("bit_keras_local_shades", "train", data_dir=str(tmp_path))
    test = data.from_tfds("bit_keras_local_shades", "test", data_dir=str(tmp_path))
    assert (train.num_examples, test.num_examples, train.num_classes) == (12, 4, 2)
    assert train.class_names == ["dark", "light"]
    for image, label in train.dataset.as_numpy_iterator():
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8
        assert image.mean() == (40 if label == 0 else 200)
