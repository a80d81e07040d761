"""
Property-based: random keys and values thrown at the override parser and at the command line
are either accepted or refused with one line `error: ...` and exit status 2, never a
traceback. Training itself is replaced by a stub, so that accepted input costs nothing; and
random values for every key go through every check that runs before a run starts.
"""

import pytest
import contextlib
import io

from hypothesis import HealthCheck, given, settings, strategies as st
from labml import experiment

from gpt_experiment import Configs, UserError
from gpt_experiment import main as cli_main, training
from gpt_experiment.checks import parameter_count
from gpt_experiment.overrides import check_overrides, config_keys
from gpt_experiment.runs import project_path
from gpt_experiment.training import compute_ahead, configure

from conftest import TINY

# Hundreds of examples, each through labml's configs.
pytestmark = pytest.mark.slow

KEYS = sorted(config_keys(Configs))

keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=20),
                 st.sampled_from(KEYS).map(lambda k: k + 'x'), st.sampled_from(KEYS).map(lambda k: k.upper()))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30), st.sampled_from(['1e400', 'nan', '-0', '[0.9, 0.99]', '[1, [2]]', '{a: 1}',
                                                           '9' * 5000, 'character', 'file', '', '=', '0x10']))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2))
items = st.one_of(st.tuples(keys, scalars).map(lambda kv: f'{kv[0]}={kv[1]}'), st.text(max_size=20),
                  st.sampled_from(['--resume', '--checkpoint', '--name', '--comment', '--bogus', 'x.yaml', '-', '--']))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=4))
def test_override_parser_accepts_or_refuses_in_one_line(overrides):
    try:
        checked = check_overrides(Configs, overrides)
    except UserError as e:
        assert str(e) and '\n' not in str(e)
    else:
        assert set(checked) <= set(KEYS)


@settings(max_examples=300, deadline=None)
@given(st.lists(items, max_size=5))
def test_command_line_accepts_or_refuses_in_one_line(argv):
    calls = []

    def train(overrides, **kwargs):
        # what training.train does first with the overrides
        calls.append(check_overrides(Configs, overrides))

    original, training.train = training.train, train
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli_main.run(argv)
            except SystemExit as e:  # --help (or an abbreviation of it) lists the keys and exits 0
                status = e.code
                assert status == 0 and 'config keys' in out.getvalue()
    finally:
        training.train = original
    assert 'Traceback' not in out.getvalue() + err.getvalue()
    if status == 0:
        assert err.getvalue() == ''
    else:
        assert status == 2
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: '), err.getvalue()


# ## Values: every settable key with random values, through every check that runs before a run

SETTABLE = sorted(k for k in KEYS if k not in ('text', 'text_file', 'valid_text_file'))
numbers = st.one_of(st.integers(), st.integers(min_value=-2 ** 80, max_value=2 ** 80),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 2 ** 63, 0.5, 1e-300]))
random_values = st.one_of(numbers, st.booleans(), st.text(max_size=12), numbers.map(str),
                          st.lists(numbers, max_size=3), st.lists(numbers, max_size=3).map(str))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(SETTABLE), value=random_values)
def test_every_value_is_accepted_or_refused_in_one_line(project, key, value):
    """
    A value for any key is refused with one line, or accepted; and when the model it gives is
    small, everything training reads then computes without an error.
    """
    experiment.create(name='fuzz', python_file=project_path(), writers=set())
    try:
        conf = configure(check_overrides(Configs, {**TINY, 'text': 'corpus.txt', 'inner_iterations': 1, key: value}))
    except UserError as e:
        assert str(e) and '\n' not in str(e)
        return
    if parameter_count(conf) < 10 ** 6 and conf.batch_size * conf.seq_len < 10 ** 6:
        compute_ahead(conf)
    assert not (project / 'logs').exists()
