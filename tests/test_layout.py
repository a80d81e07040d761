"""
The package's layout, read from its imports: every module is on one floor, imports only from its
own floor and the floors below, and no two modules import each other, however indirectly. The
command lines import no torch until their arguments are parsed.
"""

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / 'gpt_experiment'

# From the ground up
FLOORS = [
    # what everything stands on
    {'errors', 'files', 'commands', 'console', 'distributed', 'labml_glue'},
    # the core, read in this order
    {'model', 'optimizer', 'tokenizers', 'corpus', 'sampling', 'trainer', 'configs'},
    # what a user's values are checked against
    {'overrides', 'checks'},
    # the run folder: writing checkpoints, finding and reading runs, reporting on them (`gpt-runs`),
    # and Hugging Face folders, written and read (`hf`)
    {'checkpoints', 'runs', 'reports', 'hf'},
    # the edges: what a user calls
    {'training', 'generate', 'evaluate', 'dashboard', 'export', 'main', '__init__'},
]


def imports(module: str) -> set:
    """The package's modules that `module` imports, anywhere in it (a function's imports too)."""
    tree = ast.parse((PACKAGE / f'{module}.py').read_text(encoding='utf-8'))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split('.')[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('gpt_experiment.'):
            found.add(node.module.split('.')[1])
    return found - {module}


def test_every_module_is_on_a_floor_and_imports_only_downwards():
    modules = {p.stem for p in PACKAGE.glob('*.py')}
    floor_of = {m: i for i, floor in enumerate(FLOORS) for m in floor}
    assert modules == set(floor_of), 'every module is on exactly one floor'
    upwards = [(m, other) for m in modules for other in imports(m) if floor_of[other] > floor_of[m]]
    assert not upwards


def test_no_circle_of_imports():
    graph = {p.stem: imports(p.stem) for p in PACKAGE.glob('*.py')}
    done, path = set(), []

    def visit(m):
        assert m not in path, ' -> '.join(path[path.index(m):] + [m])
        if m in done:
            return
        path.append(m)
        for other in graph[m]:
            visit(other)
        path.pop()
        done.add(m)
    for m in graph:
        visit(m)


def test_the_command_lines_import_no_torch_to_answer_help():
    code = ('import importlib, sys, tomllib\n'
            'scripts = tomllib.load(open("pyproject.toml", "rb"))["project"]["scripts"]\n'
            'for target in scripts.values():\n'
            '    module, function = target.split(":")\n'
            '    try:\n'
            '        getattr(importlib.import_module(module), function)(["--help"])\n'
            '    except SystemExit:\n'
            '        pass\n'
            'print(len(scripts), [m for m in ("torch", "labml_nn", "labml_helpers") if m in sys.modules])')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == '6 []', result.stdout[-2000:] + result.stderr[-2000:]
