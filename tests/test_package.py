"""
The package as pip installs it: a wheel built from `pyproject.toml` carries the commands, and
every command points at a function that exists; the runtime dependencies are only what training
and generation need.
"""

import configparser
import importlib
import subprocess
import sys
import tomllib
import zipfile

from conftest import REPO_ROOT

COMMANDS = {'gpt-train', 'gpt-generate', 'gpt-evaluate', 'gpt-runs', 'gpt-dashboard', 'gpt-export'}


def _project():
    return tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text(encoding='utf-8'))['project']


def test_every_command_points_at_a_function():
    scripts = _project()['scripts']
    assert set(scripts) == COMMANDS
    for name, target in scripts.items():
        module, func = target.split(':')
        assert callable(getattr(importlib.import_module(module), func)), name


def test_runtime_dependencies_are_only_what_training_needs():
    deps = {d.split('=')[0].split('<')[0].split('[')[0].strip().lower() for d in _project()['dependencies']}
    assert 'torch' in deps and 'labml-nn' in deps
    assert not deps & {'pytest', 'hypothesis', 'matplotlib', 'ipykernel', 'nbclient', 'playwright', 'tensorboard',
                       'transformers', 'safetensors'}
    # the torch pin stays in the same install as labml-nn
    assert 'torch==2.13.0' in _project()['dependencies']
    assert set(_project()['optional-dependencies']) >= {'tensorboard', 'notebook', 'browser', 'hf', 'test'}


def test_wheel_carries_the_commands(tmp_path):
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--no-build-isolation',
                    '-w', str(tmp_path), str(REPO_ROOT)], check=True, capture_output=True)
    wheel, = tmp_path.glob('gpt_experiment-*.whl')
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = configparser.ConfigParser()
        entry_points.read_string(z.read(next(n for n in names if n.endswith('entry_points.txt'))).decode())
    assert set(entry_points['console_scripts']) == COMMANDS
    assert 'gpt_experiment/training.py' in names and 'gpt_experiment/main.py' in names
    # the default corpus is package data
    assert 'gpt_experiment/data/tiny_shakespeare.txt.gz' in names
