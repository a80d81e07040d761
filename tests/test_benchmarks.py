"""
The benchmarks run, on tiny shapes, and end with the ratio they are for. They time nothing
here: each is run once, to prove it still runs against the current code (two had stopped
running: one set a key the experiment computes, one iterated a loader that has epochs).
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, write_project

pytestmark = pytest.mark.slow

TINY_MODEL = ['transformer.d_model=32', 'transformer.n_heads=2', 'transformer.n_layers=1', 'transformer.ffn.d_ff=64',
              'seq_len=16']


def _run(tmp_path, script, *args):
    write_project(tmp_path)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, str(REPO_ROOT / 'benchmarks' / script), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize('script, args, last', [
    ('generate.py', ['--new', '3', '--prompt', '8', *TINY_MODEL], r'cache speed-up: \d+\.\d\dx'),
    ('dropout_mask.py', ['--shape', '4', '64', '--repeats', '2'], r'int31/bytes: \d+\.\d'),
    ('per_tensor.py', ['--repeats', '2'], r'train\(\)/step: \d+\.\d\d%'),
    ('bf16_crossover.py', ['--widths', '32', '--layers', '1', '--batches', '2x16', '--steps', '1', '--warmup', '0'],
     r'^\s+32\s+\d+\.\d\d'),
    ('throughput.py', ['--steps', '2', '--warmup', '0'], r'speedup: \d+\.\d\d'),
], ids=lambda v: v if isinstance(v, str) and v.endswith('.py') else None)
def test_a_benchmark_runs_and_prints_its_ratio(tmp_path, script, args, last):
    out = _run(tmp_path, script, *args)
    lines = [line for line in out.splitlines() if line.strip()]
    assert re.search(last, lines[-1]), out[-2000:]
    # every benchmark names the CPU it ran on, with its bf16 flags (or that it has none)
    assert re.search(r'\((amx_bf16|avx512|no avx512f)', out), out[:2000]


def test_the_big_corpus_benchmark_loads_and_trains(tmp_path):
    text = tmp_path / 'big.txt'
    text.write_text('To be, or not to be, that is the question.\n' * 2000)
    out = _run(tmp_path, 'big_corpus.py', str(text), '--steps', '2')
    assert re.search(r'loaded \d+ MB in \d+\.\d+s', out)
    assert re.search(r'2 training steps, loss \d+\.\d{3}', out)
