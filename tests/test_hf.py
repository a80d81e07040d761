"""
Hugging Face (`gpt_experiment.hf`, `gpt-export`, `init_from=hf:DIR`): a run exported is a
`transformers` model with the same logits, whose greedy continuation is `gpt-generate
--temperature 0`'s and which runs in a pipeline; a GPT-2 or OpenAI GPT folder starts a run with
that model's logits; the round trip keeps them; what has no twin is one line. Every HF model and
tokenizer here is made on the spot, tiny, with random weights: nothing is downloaded.
"""

import pytest
import torch

from gpt_experiment import UserError, hf, runs, tokenizers, train
from gpt_experiment.export import run as export_run
from gpt_experiment.generate import run as generate_run
from gpt_experiment.main import run as train_run
from gpt_experiment.overrides import overrides_from_args
from gpt_experiment.trainer import Trainer

from conftest import CORPUS, REPO_ROOT, TINY, make_configs, run_dirs

transformers = hf.import_transformers()

# The logits of the two sides agree to this (float32)
TOLERANCE = 1e-4
# A context long enough for the prompt and a 20-token greedy continuation in characters
RUN = {**TINY, 'text': 'corpus.txt', 'seq_len': 32, 'epochs': 1, 'inner_iterations': 1, 'sample_tokens': 2,
       'learning_rate': 3e-3, 'dtype': 'float32'}
PROMPT = 'It is '


def _randomise(model: torch.nn.Module, seed: int = 0):
    """Every weight random, gains and biases too, so that a wrong mapping of any of them shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                p.normal_(1.0 if isinstance(module, torch.nn.LayerNorm) and name == 'weight' else 0.0, 0.3)
    return model


def _ours(model, ids: torch.Tensor) -> torch.Tensor:
    """Our logits `[batch, seq, vocab]` for ids `[batch, seq]` (our model is sequence first)."""
    with torch.no_grad():
        return model.eval()(ids.t())[0].transpose(0, 1)


def _theirs(hf_model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model.eval()(ids).logits


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def _ids(n_tokens: int, seq_len: int) -> torch.Tensor:
    return torch.randint(n_tokens, (2, seq_len), generator=torch.Generator().manual_seed(1))


# ## The mapping, shape by shape

SHAPES = {
    # the defaults: pre-LN, fixed positions, exact GELU, untied, a generator bias (30 characters
    # over 32 dimensions: it folds into ln_f)
    'gpt2': {},
    'gpt2-learned-tied-tanh': {'transformer.src_embed': 'learned_pos', 'tie_embeddings': True,
                               'transformer.ffn.activation': 'GELU_tanh'},
    'gpt2-no-positions-relu-no-biases-mha': {
        'transformer.src_embed': 'no_pos', 'transformer.ffn.activation': 'ReLU', 'transformer.ffn.bias1': False,
        'transformer.ffn.bias2': False, 'generator_bias': False, 'transformer.encoder_attn': 'mha'},
    # GPT-1's shape
    'openai-gpt': {'transformer.encoder_layer': 'post_ln', 'transformer.src_embed': 'learned_pos',
                   'tie_embeddings': True, 'generator_bias': False, 'transformer.ffn.activation': 'GELU_tanh',
                   'transformer.ffn.d_ff': 128},
    'openai-gpt-fixed-untied-relu-bias': {'transformer.encoder_layer': 'post_ln', 'transformer.ffn.activation': 'ReLU',
                                          'transformer.ffn.d_ff': 128},
}


@pytest.mark.parametrize('shape', SHAPES)
def test_every_shape_exports_and_comes_back_with_the_same_logits(tiny_configs, tmp_path, shape):
    conf = tiny_configs(**{'transformer.n_layers': 2, **SHAPES[shape]})
    model = _randomise(conf.model)
    exported = hf.export(model, seq_len=conf.seq_len)
    hf_model = hf.to_transformers(exported)
    assert exported.architecture == ('openai-gpt' if shape.startswith('openai') else 'gpt2')
    ids = _ids(conf.n_tokens, conf.seq_len)
    assert _gap(_ours(model, ids), _theirs(hf_model, ids)) < TOLERANCE

    # and back: the folder read as `init_from=hf:` reads it, into a model built from its shape
    hf_model.save_pretrained(str(tmp_path))
    hf.save_tokenizer(conf.text.tokenizer, tmp_path, conf.seq_len)
    source = hf.source(str(tmp_path))
    assert source.shape['transformer.encoder_layer'] == ('post_ln' if shape.startswith('openai') else 'default')
    assert source.vocabulary.itos == conf.text.tokenizer.itos
    back = make_configs({'text': 'corpus.txt', **TINY, **source.shape}).model
    source.load_weights(back)
    assert _gap(_ours(model, ids), _ours(back, ids)) < TOLERANCE


@pytest.mark.parametrize('shape, named', [
    ({'transformer.ffn.glu_variant': 'GEGLU'}, 'transformer.ffn.is_gated'),
    # OpenAI GPT's GELU is the tanh approximation, and its feed-forward layers 4 x d_model wide
    ({'transformer.encoder_layer': 'post_ln', 'transformer.ffn.d_ff': 128}, 'transformer.ffn.activation=GELU'),
    ({'transformer.encoder_layer': 'post_ln', 'transformer.ffn.activation': 'GELU_tanh'}, 'transformer.ffn.d_ff=64'),
    ({'transformer.encoder_attn': 'relative'}, 'transformer.encoder_attn'),
    # 300 tokens over 32 dimensions: a bias that no vector in the last LayerNorm makes
    ({'tokenizer': 'bpe', 'bpe_vocab_size': 300}, 'generator_bias=true'),
])
def test_what_hf_cannot_compute_is_refused_naming_the_key(tiny_configs, shape, named):
    conf = tiny_configs(**shape)
    with pytest.raises(UserError) as e:
        hf.export(_randomise(conf.model), seq_len=conf.seq_len)
    assert str(e.value).startswith(f'cannot export {named}')
    assert '\n' not in str(e.value)


def test_a_character_tokenizer_is_a_fast_tokenizer_with_the_same_ids(tmp_path):
    ours = tokenizers.CharacterTokenizer(sorted(set(CORPUS)))
    hf.save_tokenizer(ours, tmp_path, 32)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    # characters outside the vocabulary ('Z', 'é', '\r', the emoji) are dropped, as ours drops them
    text = 'It is Zé lazy.\r\n The  apples, 🍎 ripen ]^[\\'
    assert theirs(text)['input_ids'] == ours.encode(text)
    assert theirs.decode(ours.encode(text)) == ours.decode(ours.encode(text))
    # and `init_from=hf:` reads it back as characters
    assert hf._our_tokenizer(tmp_path).itos == ours.itos


# ## `gpt-export` on trained runs

def _train(project, name: str, args: list) -> str:
    train(overrides_from_args(args), name=name, writers='sqlite')
    (run_dir,) = run_dirs(project, name)
    return run_dir.name


def _export(uuid: str, out, capsys) -> str:
    capsys.readouterr()
    assert export_run([uuid, '-o', str(out)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _greedy(uuid: str, n: int, capsys) -> str:
    capsys.readouterr()
    assert generate_run(['--run', uuid, '--prompt', PROMPT, '--temperature', '0', '--max-new-tokens', str(n)]) == 0
    return capsys.readouterr().out[:-1]


RUNS = {
    'character': ([], 'GPT2LMHeadModel'),
    'bpe': (['tokenizer=bpe', 'bpe_vocab_size=300', 'generator_bias=false', 'transformer.src_embed=learned_pos'],
            'GPT2LMHeadModel'),
    'gpt1': ([str(REPO_ROOT / 'configs' / 'gpt1.yaml'), 'bpe_vocab_size=300', 'transformer.n_layers=2',
              'transformer.d_model=32', 'transformer.n_heads=2', 'transformer.ffn.d_ff=128', 'warmup_steps=512'],
             'OpenAIGPTLMHeadModel'),
}


@pytest.mark.parametrize('kind', [pytest.param(k, marks=[pytest.mark.slow] if k != 'character' else []) for k in RUNS])
def test_an_exported_run_is_a_transformers_model_that_computes_the_same(project, capsys, kind):
    extra, model_class = RUNS[kind]
    base = [f'{k}={v}' for k, v in RUN.items()]
    # a preset comes first, and the tiny shape after it
    args = extra[:1] + base + extra[1:] if kind == 'gpt1' else base + extra
    uuid = _train(project, kind, args)
    out = project / 'exported'
    assert _export(uuid[:8], out, capsys).startswith(f'{out}: {model_class}')
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'generation_config.json', 'model.safetensors',
                                                    'tokenizer.json', 'tokenizer_config.json']

    # Loaded as any Hugging Face model is, offline
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert type(model).__name__ == model_class
    run_dir, checkpoint = runs.find(uuid)
    ours, conf, our_tokenizer = runs.load_model(run_dir, checkpoint, 'cpu')
    ids = _ids(our_tokenizer.n_tokens, conf.seq_len)
    assert _gap(_ours(ours, ids), _theirs(model, ids)) < TOLERANCE
    text = "It is a truth known to every gardener\n that the bees hum, don't they? "
    assert tokenizer(text)['input_ids'] == our_tokenizer.encode(text)
    assert tokenizer.decode(our_tokenizer.encode(text)) == our_tokenizer.decode(our_tokenizer.encode(text))

    # The greedy continuation is gpt-generate's, and a pipeline gives it too
    n = 20
    expected = _greedy(uuid, n, capsys)
    prompt = tokenizer(PROMPT, return_tensors='pt')['input_ids']
    greedy = model.generate(prompt, do_sample=False, max_new_tokens=n)
    assert greedy.shape[1] == prompt.shape[1] + n
    assert tokenizer.decode(greedy[0]) == expected
    generator = transformers.pipeline('text-generation', model=str(out))
    assert generator(PROMPT, do_sample=False, max_new_tokens=n)[0]['generated_text'] == expected
    # by default it samples, as gpt-generate does, up to the context
    assert generator(PROMPT)[0]['generated_text'].startswith(PROMPT)


@pytest.mark.slow
def test_export_refuses_in_one_line_and_writes_nothing(project, capsys):
    uuid = _train(project, 'bpe', [f'{k}={v}' for k, v in RUN.items()] + ['tokenizer=bpe', 'bpe_vocab_size=300'])
    out = project / 'exported'
    capsys.readouterr()
    assert export_run([uuid, '-o', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: cannot export generator_bias=true') and err.count('\n') == 1
    assert not out.exists() and not list(project.glob('exported*'))
    # a folder in the way, and a step that is not one
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    for argv, fragment in [([uuid, '-o', str(out)], 'not an empty folder'), ([f'{uuid}:x', '-o', 'x'], 'step')]:
        assert export_run(argv) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count('\n') == 1
    assert (out / 'keep.txt').read_text() == 'mine'


# ## `init_from=hf:DIR`

def _hf_bpe_tokenizer():
    """A byte-level BPE trained on the corpus with `tokenizers`, GPT-2's way, with its end-of-text token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([CORPUS], trainers.BpeTrainer(
        vocab_size=300, special_tokens=['<|endoftext|>'], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<|endoftext|>')


def _hf_gpt2(folder, **config):
    """A tiny GPT-2 with GPT-2's own defaults (tied embeddings, `gelu_new`), random weights, saved in `folder`."""
    tokenizer = _hf_bpe_tokenizer()
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=2, **config))
    _randomise(model)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model.eval(), tokenizer


def _first_step(monkeypatch, ids):
    """Our model's logits on `ids` when the first training step starts."""
    seen = {}
    real = Trainer.train_step

    def train_step(self, data, target, *rest):
        if not seen:
            seen['logits'] = _ours(self.model, ids)
            self.model.train()
        return real(self, data, target, *rest)
    monkeypatch.setattr(Trainer, 'train_step', train_step)
    return seen


def test_an_hf_gpt2_starts_a_run_with_its_logits_fine_tunes_and_exports_back(project, monkeypatch, capsys):
    folder = project / 'hf-gpt2'
    hf_model, hf_tokenizer = _hf_gpt2(folder)
    ids = _ids(len(hf_tokenizer), 16)
    seen = _first_step(monkeypatch, ids)
    # no shape given: it is the folder's; a context shorter than its 32 positions
    uuid = _train(project, 'tuned', [f'{k}={v}' for k, v in {
        'text': 'corpus.txt', 'seq_len': 16, 'batch_size': 8, 'epochs': 1, 'inner_iterations': 1, 'sample_tokens': 2,
        'learning_rate': 3e-3, 'dtype': 'float32', 'transformer.dropout': 0.0, 'init_from': 'hf:hf-gpt2'}.items()])
    assert _gap(seen['logits'], _theirs(hf_model, ids)) < TOLERANCE

    run_dir, checkpoint = runs.find(uuid)
    configs = runs.given_configs(run_dir)
    assert configs['init_from'] == f'hf:{folder}'
    assert {k: configs[k] for k in ('transformer.d_model', 'transformer.n_layers', 'transformer.ffn.d_ff',
                                    'transformer.ffn.activation', 'tie_embeddings', 'generator_bias', 'seq_len')} == \
        {'transformer.d_model': 32, 'transformer.n_layers': 2, 'transformer.ffn.d_ff': 128,
         'transformer.ffn.activation': 'GELU_tanh', 'tie_embeddings': True, 'generator_bias': False, 'seq_len': 16}
    # the corpus was encoded with the folder's tokenizer, kept with the run
    assert tokenizers.load(run_dir).encode(CORPUS) == hf_tokenizer(CORPUS)['input_ids']
    # fine-tuned: the weights moved
    tuned, conf, _ = runs.load_model(run_dir, checkpoint, 'cpu')
    assert _gap(_ours(tuned, ids), seen['logits']) > 1e-3
    # and generated from, like any run
    assert _greedy(uuid, 5, capsys).startswith(PROMPT)

    # The round trip: exported, the fine-tuned run is a GPT-2 with its logits
    out = project / 'exported'
    _export(uuid, out, capsys)
    again = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert _gap(_ours(tuned, ids), _theirs(again, ids)) < TOLERANCE


def test_an_hf_openai_gpt_is_read_as_the_post_ln_gpt(project, tmp_path):
    chars = tokenizers.CharacterTokenizer(sorted(set(CORPUS)))
    hf_model = _randomise(transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(
        vocab_size=chars.n_tokens, n_positions=16, n_embd=32, n_layer=2, n_head=2)))
    hf_model.save_pretrained(str(tmp_path))
    hf.save_tokenizer(chars, tmp_path, 16)
    source = hf.source(str(tmp_path))
    assert source.shape['transformer.encoder_layer'] == 'post_ln'
    assert source.shape['transformer.ffn.activation'] == 'GELU_tanh'
    assert source.shape['tokenizer'] == 'character'
    ours = make_configs({'text': 'corpus.txt', **TINY, **source.shape}).model
    source.load_weights(ours)
    ids = _ids(chars.n_tokens, 16)
    assert _gap(_ours(ours, ids), _theirs(hf_model, ids)) < TOLERANCE


def test_init_from_hf_bad_input_is_one_line(project, capsys):
    _hf_gpt2(project / 'hf-gpt2')
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2))
    llama.save_pretrained(str(project / 'hf-llama'))
    silu = project / 'hf-silu'
    _hf_gpt2(silu, activation_function='silu')
    cases = [
        (['init_from=hf:hf-llama'], "holds a 'llama' model"),
        (['init_from=hf:nowhere'], 'no such folder'),
        (['init_from=hf:'], 'needs a folder'),
        (['init_from=hf:hf-silu'], "activation_function='silu'"),
        (['init_from=hf:hf-gpt2', 'transformer.d_model=64'], 'transformer.d_model=64 contradicts hf:'),
        (['init_from=hf:hf-gpt2', 'seq_len=64'], 'seq_len=64: hf:'),
        (['init_from=hf:hf-gpt2', 'tokenizer=character'], 'tokenizer=character contradicts'),
    ]
    capsys.readouterr()
    for argv, fragment in cases:
        assert train_run(['text=corpus.txt', *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith('error: ') and fragment in err and err.count('\n') == 1, (argv, err)
    assert not (project / 'logs').exists() or not any((project / 'logs').rglob('run.yaml'))
