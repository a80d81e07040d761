"""
Shared fixtures for the gpt_experiment tests.

Every test that builds configs or trains runs inside its own labml project: a temporary
folder with a `.labml.yaml` and a small corpus written by the test suite, so that runs land
in `<tmp>/logs/` and nothing is read from or written to the repository's `data/` or `logs/`.
"""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LABML_YAML = 'check_repo_dirty: false\ndata_path: data\nexperiments_path: logs\n'

# A short paragraph of English-like text, repeated so that a tiny model learns it within a
# couple of epochs. It has the default prompt 'It is ', a lower-case 'z' ("lazy", "size")
# but no upper-case 'Z'.
PARAGRAPH = (
    "It is a truth known to every gardener that a lazy afternoon in the orchard is never "
    "wasted. The apples ripen, the bees hum over the clover, and the old dog sleeps by the "
    "gate. When the evening comes, we gather the fruit of every size into baskets and carry "
    "them home along the river path, singing the songs our mothers taught us.\n"
)
CORPUS = PARAGRAPH * 14

# A model small enough to build and train in a second or two on two CPU cores.
TINY = {
    'transformer.d_model': 32,
    'transformer.n_heads': 2,
    'transformer.n_layers': 1,
    'transformer.ffn.d_ff': 64,
    'transformer.dropout': 0.0,
    'seq_len': 16,
    'batch_size': 8,
}


def write_project(path: Path) -> Path:
    """A labml project at `path`: `.labml.yaml` and `corpus.txt`."""
    path.mkdir(parents=True, exist_ok=True)
    (path / '.labml.yaml').write_text(LABML_YAML, encoding='utf-8')
    (path / 'corpus.txt').write_text(CORPUS, encoding='utf-8')
    return path


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A fresh labml project as the current directory."""
    write_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_configs(overrides: Dict) -> 'Configs':
    """
    `Configs` with `overrides` applied the way `main` applies them (parsed by
    `check_overrides`, then labml's `experiment.configs`), without starting a run.
    Must be called with a labml project as the current directory.
    """
    from labml import experiment
    from gpt_experiment import Configs
    from gpt_experiment.overrides import check_overrides
    from gpt_experiment.runs import project_path

    assert project_path() is not None, 'make_configs needs a labml project as the current directory'
    checked = check_overrides(Configs, overrides)
    experiment.create(name='configs', python_file=project_path(), writers=set())
    conf = Configs()
    experiment.configs(conf, checked)
    return conf


@pytest.fixture
def tiny_configs(project):
    """Build tiny-model configs on the project's corpus, with extra overrides."""
    def build(**extra):
        return make_configs({'text': 'corpus.txt', **TINY, **extra})
    return build


def run_cli(args: List[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m gpt_experiment.main ARGS` in `cwd`, with the repository on PYTHONPATH."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    # Tiny models run faster on one thread, and two subprocesses then do not fight for cores.
    env.setdefault('OMP_NUM_THREADS', '1')
    return subprocess.run([sys.executable, '-m', 'gpt_experiment.main', *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_dirs(project_path: Path, name: str) -> List[Path]:
    """The run folders `logs/<name>/<uuid>/` of a project."""
    root = project_path / 'logs' / name
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def checkpoint_steps(run_dir: Path) -> List[int]:
    """The global steps that have a `checkpoints/<step>/model.safetensors`."""
    root = run_dir / 'checkpoints'
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if (p / 'model.safetensors').is_file())


def weights(checkpoint: Path) -> Dict:
    """The tensors of a checkpoint's `model.safetensors`."""
    from safetensors.torch import load_file
    return load_file(str(Path(checkpoint) / 'model.safetensors'))


def read_scalars(run_dir: Path, indicator: str) -> List[tuple]:
    """`(step, value)` of an indicator, as labml's sqlite writer stored it, in step order."""
    db = run_dir / 'sqlite.db'
    assert db.is_file(), f'no sqlite.db in {run_dir}'
    with sqlite3.connect(str(db)) as conn:
        return conn.execute('SELECT step, value FROM scalars WHERE indicator = ? ORDER BY step',
                            (indicator,)).fetchall()


def pytest_configure(config):
    # gpt_experiment silences this labml warning with `warnings.filterwarnings` at import time;
    # pytest resets the filters for every test, so repeat it here.
    config.addinivalue_line('filterwarnings', 'ignore:Overriding option for')
    # `pytest -m cuda` runs only the tests of the CUDA path (tests/test_cuda.py); without a GPU
    # they are reported as skipped, with the reason.
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU (skipped where none is available)')
    # `pytest -m "not slow"`: the quick loop, under three minutes on two cores; CI runs everything.
    config.addinivalue_line('markers', 'slow: starts processes or trains several runs (left out by -m "not slow")')
