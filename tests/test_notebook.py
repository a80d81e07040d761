"""
`notebooks/experiment.ipynb` runs top to bottom (nbclient, on an ipykernel), on the test
corpus and a tiny model: its parameters cell is followed by one that overrides them, the way
papermill injects parameters. Any cell error fails the test.
"""

import pytest
import os

import nbformat
from nbclient import NotebookClient

from conftest import REPO_ROOT, TINY, run_dirs

# A Jupyter kernel runs the whole notebook.
pytestmark = pytest.mark.slow

NOTEBOOK = REPO_ROOT / 'notebooks' / 'experiment.ipynb'


def test_notebook_trains_plots_and_samples(project, monkeypatch):
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
    overrides = {**TINY, 'text': 'file', 'text_file': 'corpus.txt', 'epochs': 2, 'inner_iterations': 1,
                 'sample_tokens': 3}
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(f"name = 'nb_test'\noverrides = {overrides!r}"))
    # The kernel imports gpt_experiment from the repository and runs in the test's project.
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    NotebookClient(nb, timeout=170, kernel_name='python3', resources={'metadata': {'path': str(project)}}).execute()

    runs = run_dirs(project, 'nb_test')
    assert len(runs) == 1
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    # the loss plot
    assert any('image/png' in o.get('data', {}) for o in outputs)
    # the run's folder and the sample, printed
    text = ''.join(o.get('text', '') for o in outputs if o.get('output_type') == 'stream')
    assert f'run: {runs[0]}' in text
    sample = [l for l in text.splitlines() if l.startswith('It is ')]
    assert sample and len(sample[-1]) == len('It is ') + 200
