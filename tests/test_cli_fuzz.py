"""
Property-based: random keys and values thrown at the override parser and at the command line
are either accepted or refused with one line `error: ...` and exit status 2, never a
traceback. Training itself is replaced by a stub, so that accepted input costs nothing.
"""

import contextlib
import io

from hypothesis import given, settings, strategies as st

from gpt_experiment import Configs, UserError
from gpt_experiment import main as cli_main
from gpt_experiment.cli import check_overrides, config_keys

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
        # what train.main does first with the overrides
        calls.append(check_overrides(Configs, overrides))

    original, cli_main.main = cli_main.main, train
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli_main.run(argv)
            except SystemExit as e:  # --help (or an abbreviation of it) lists the keys and exits 0
                status = e.code
                assert status == 0 and 'config keys' in out.getvalue()
    finally:
        cli_main.main = original
    assert 'Traceback' not in out.getvalue() + err.getvalue()
    if status == 0:
        assert err.getvalue() == ''
    else:
        assert status == 2
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: '), err.getvalue()
