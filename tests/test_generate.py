"""Decoding with a key/value cache, samplers, and `python -m gpt_experiment.generate`."""

import os
import subprocess
import sys

import pytest
import torch

from gpt_experiment import UserError
from gpt_experiment.generate import run as generate_run
from gpt_experiment.sampling import KVCache, generate as decode, make_sampler
from gpt_experiment import train

from conftest import REPO_ROOT, TINY, run_dirs

GPT1_LIKE = {'transformer.src_embed': 'learned_pos', 'transformer.encoder_layer': 'post_ln',
             'tie_embeddings': True}


def _random_model(conf):
    """The configured model with positions that matter (learned tables start at zero)."""
    model = conf.model.eval()
    pe = getattr(model.src_embed, 'positional_encodings', None)
    if isinstance(pe, torch.nn.Parameter):
        torch.manual_seed(1)
        torch.nn.init.normal_(pe, std=0.5)
    return model


@pytest.mark.parametrize('extra', [{}, {'transformer.encoder_attn': 'sdpa'}, GPT1_LIKE,
                                   {'transformer.src_embed': 'no_pos', 'transformer.encoder_attn': 'sdpa'}],
                         ids=['mha', 'sdpa', 'gpt1-like', 'no-positions'])
def test_cached_logits_equal_a_full_forward(tiny_configs, extra):
    conf = tiny_configs(**extra)
    model = _random_model(conf)
    torch.manual_seed(0)
    x = torch.randint(0, conf.n_tokens, (conf.seq_len, 1))
    with torch.no_grad():
        full, _ = model(x)
    cache = KVCache(model)
    # a prompt of 5, then one token at a time
    parts = [cache.forward(x[:5])] + [cache.forward(x[i:i + 1]) for i in range(5, conf.seq_len)]
    torch.testing.assert_close(torch.cat(parts), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('extra', [{}, {'transformer.encoder_attn': 'sdpa'}, GPT1_LIKE,
                                   {'transformer.src_embed': 'no_pos', 'transformer.encoder_attn': 'sdpa'}],
                         ids=['mha', 'sdpa', 'gpt1-like', 'no-positions'])
def test_greedy_cached_and_uncached_give_identical_tokens(tiny_configs, extra):
    conf = tiny_configs(**extra)
    model = _random_model(conf)
    prompt = conf.text.text_to_i('It is a truth')
    greedy = make_sampler(temperature=0)
    # within the window
    n = conf.seq_len - len(prompt)
    uncached = list(decode(model, prompt, n_tokens=n, seq_len=conf.seq_len, sampler=greedy, use_cache=False))
    cached = list(decode(model, prompt, n_tokens=n, seq_len=conf.seq_len, sampler=greedy, use_cache=True))
    assert cached == uncached
    # far past the window: with a slide of one token the cached context is exactly the uncached one
    n = 3 * conf.seq_len
    uncached = list(decode(model, prompt, n_tokens=n, seq_len=conf.seq_len, sampler=greedy, use_cache=False))
    cached = list(decode(model, prompt, n_tokens=n, seq_len=conf.seq_len, sampler=greedy, use_cache=True, slide=1))
    assert cached == uncached
    # the default slide runs past the window too
    assert len(list(decode(model, prompt, n_tokens=n, seq_len=conf.seq_len, sampler=greedy))) == n


def test_samplers_compose_and_check_their_arguments():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    torch.manual_seed(0)
    assert make_sampler(0)(logits).item() == 0
    # top-k 1, or a nucleus smaller than the top token, is greedy
    assert {make_sampler(1.0, top_k=1)(logits).item() for _ in range(20)} == {0}
    assert {make_sampler(1.0, top_p=0.1)(logits).item() for _ in range(20)} == {0}
    # top-k 2 and top-p: only the first two tokens, whatever the temperature
    drawn = {make_sampler(5.0, top_k=2, top_p=0.99)(logits).item() for _ in range(200)}
    assert drawn == {0, 1}
    # top-p alone at a high temperature keeps more
    assert len({make_sampler(5.0, top_p=0.9)(logits).item() for _ in range(200)}) >= 3
    # top-k larger than the vocabulary is the whole vocabulary
    assert make_sampler(1.0, top_k=100)(logits).shape == (1,)
    for kwargs, fragment in [({'temperature': -1}, 'temperature'), ({'top_k': 0}, 'top-k'),
                             ({'top_p': 0}, 'top-p'), ({'top_p': 1.5}, 'top-p')]:
        with pytest.raises(UserError, match=fragment):
            make_sampler(**{'temperature': 1.0, **kwargs})


@pytest.fixture
def trained_run(project):
    train({**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'sample_tokens': 2}, name='gen')
    return run_dirs(project, 'gen')[0]


def _generate(argv, capsys):
    rc = generate_run(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_command(trained_run, project, capsys):
    uuid = trained_run.name
    rc, out, err = _generate(['--run', uuid[:8], '--prompt', 'It is', '--max-new-tokens', '12',
                              '--temperature', '0'], capsys)
    assert rc == 0, err
    assert out.startswith('It is') and len(out) == len('It is') + 12 + 1
    # the same tokens without the cache
    rc, out_nc, _ = _generate(['--run', uuid, '--prompt', 'It is', '--max-new-tokens', '12',
                               '--temperature', '0', '--no-cache'], capsys)
    assert rc == 0 and out_nc == out
    # sampling with a seed is reproducible; several samples
    args = ['--run', uuid, '--prompt', 'the', '--max-new-tokens', '8', '--top-k', '5', '--top-p', '0.9',
            '--num-samples', '2', '--seed', '3']
    first, second = _generate(args, capsys)[1], _generate(args, capsys)[1]
    assert first == second and first.count('--- sample') == 2
    # a prompt longer than the context is cropped, with a warning
    rc, out, err = _generate(['--run', uuid, '--prompt', 'the orchard ' * 10, '--max-new-tokens', '3'], capsys)
    assert rc == 0 and 'warning' in err and 'keeping the last 16' in err


BAD_INPUT = [
    (['--run', 'ffff', '--prompt', 'x'], "no run 'ffff'"),
    (['--checkpoint', '7', '--prompt', 'It'], 'no checkpoint at step 7; it has: '),
    (['--prompt', 'Zebra?'], "not in the vocabulary: '?' 'Z'"),
    (['--prompt', 'It', '--temperature', '-1'], '--temperature must be a finite number >= 0, got -1.0'),
    (['--prompt', 'It', '--temperature', 'nan'], '--temperature must be a finite number >= 0, got nan'),
    (['--prompt', 'It', '--temperature', 'inf'], '--temperature must be a finite number >= 0, got inf'),
    # so small that the logits divided by it overflow
    (['--prompt', 'It', '--temperature', '1e-30'], '--temperature must be 0 (greedy) or at least 0.001'),
    (['--prompt', 'It', '--seed', str(2 ** 64)], '--seed must be in [0, 2**63)'),
    (['--prompt', 'It', '--seed', '-1'], '--seed must be in [0, 2**63)'),
    (['--prompt', 'It', '--top-k', '0'], 'top-k must be at least 1'),
    (['--prompt', 'It', '--top-p', '1.5'], 'top-p must be in (0, 1]'),
    (['--prompt', 'It', '--top-p', '0'], 'top-p must be in (0, 1]'),
    (['--prompt', 'It', '--device', 'gpu'], '--device gpu: Expected one of cpu, cuda'),
    (['--prompt', 'It', '--device', 'meta'], '--device meta: '),
    # refused at once, never read (a FIFO would wait for a writer, /dev/zero never ends)
    (['--prompt-file', 'prompt.fifo'], 'prompt.fifo is not a regular file'),
    (['--prompt-file', '/dev/zero'], '/dev/zero is not a regular file'),
    (['--prompt-file', '/dev/urandom'], '/dev/urandom is not a regular file'),
]
if not torch.cuda.is_available():
    # CUDA with a torch built without it
    BAD_INPUT.append((['--prompt', 'It', '--device', 'cuda'], '--device cuda: Torch not compiled with CUDA enabled'))


def test_generate_defaults_to_the_newest_run_and_its_prompt(project, capsys):
    common = {**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'sample_tokens': 2}
    train({**common, 'prompt': 'the'}, name='older')
    train({**common, 'prompt': 'When the'}, name='newer')
    newest = run_dirs(project, 'newer')[0]
    capsys.readouterr()  # what training printed
    rc, out, err = _generate(['--max-new-tokens', '5', '--temperature', '0'], capsys)
    assert rc == 0, err
    # the newer run's prompt, and which run and checkpoint on stderr
    assert out.startswith('When the') and len(out) == len('When the') + 5 + 1
    assert newest.name in err and 'checkpoint' in err
    # the same tokens as with the run named and its prompt given
    rc, named, _ = _generate(['--run', newest.name, '--prompt', 'When the', '--max-new-tokens', '5',
                              '--temperature', '0'], capsys)
    assert named == out


def test_generate_without_runs_is_one_line(project, capsys):
    rc, out, err = _generate([], capsys)
    assert rc == 2 and err.startswith('error: no run with a checkpoint') and err.count('\n') == 1


def test_generate_bad_input_is_one_line(trained_run, capsys):
    os.mkfifo('prompt.fifo')  # in the project, the current directory
    steps = sorted(p.name for p in (trained_run / 'checkpoints').iterdir())
    for argv, fragment in BAD_INPUT:
        if '--run' not in argv:
            argv = ['--run', trained_run.name] + argv
        rc, out, err = _generate(argv, capsys)
        assert rc == 2 and out == '', argv
        assert err.startswith('error: ') and err.count('\n') == 1 and fragment in err, err
        # what exists is listed
        if 'no run' in fragment:
            assert trained_run.name in err
        if 'no checkpoint' in fragment:
            assert all(step in err for step in steps)


@pytest.mark.slow
def test_generate_from_the_command_line_with_bpe(project):
    train({**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'sample_tokens': 2,
          'tokenizer': 'bpe', 'bpe_vocab_size': 300}, name='bpe')
    run = run_dirs(project, 'bpe')[0]
    assert (run / 'tokenizer.json').is_file()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-m', 'gpt_experiment.generate', '--run', run.name[:10],
                             '--prompt', 'Déjà vu 😀', '--max-new-tokens', '10'],
                            cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # stdout is the text alone: the prompt, exactly, and its continuation
    assert result.stdout.startswith('Déjà vu 😀') and len(result.stdout) > len('Déjà vu 😀') + 1


@pytest.mark.slow
def test_sigterm_while_generating_is_one_line_and_143(trained_run, project):
    import select
    import signal
    import time
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1')
    # far more tokens than it can make before the signal: it is sampling when the signal comes
    proc = subprocess.Popen([sys.executable, '-m', 'gpt_experiment.generate', '--run', trained_run.name,
                             '--prompt', 'It is', '--max-new-tokens', '10000000'],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # the prompt and the first tokens are out: the loop runs
        deadline = time.monotonic() + 120
        seen = b''
        while len(seen) < 20 and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 1)[0]:
                seen += os.read(proc.stdout.fileno(), 4096)
        assert len(seen) >= 20 and proc.poll() is None, (seen, proc.stderr.read()[-2000:] if proc.poll() is not None else '')
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.decode().strip().splitlines() == ['terminated'], stderr[-2000:]
