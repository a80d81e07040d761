"""
Fine-tuning (`init_from=RUN[:STEP]`): a new run that starts from another run's weights, with
its tokenizer and shape, and everything else fresh; bad input is one line.
"""

import shutil

import pytest
import torch
import yaml
from labml import tracker

from gpt_experiment import runs
from gpt_experiment.generate import run as generate_run
from gpt_experiment.trainer import Trainer
from gpt_experiment.main import run
from gpt_experiment import train

from conftest import PARAGRAPH, TINY, read_scalars, run_dirs, weights

# The source: the tiny model, pretrained on the project's corpus (the paragraph, repeated).
PRETRAIN = {**TINY, 'text': 'corpus.txt', 'inner_iterations': 1, 'sample_tokens': 2, 'learning_rate': 3e-3,
            'warmup_steps': 8 * 16 * 5}
# Fine-tuning names no model shape: it comes from the source.
FINETUNE = {'text': 'finetune.txt', 'seq_len': 16, 'batch_size': 8, 'inner_iterations': 1, 'sample_tokens': 2,
            'learning_rate': 1e-3, 'warmup_steps': 8 * 16 * 2, 'epochs': 1}


def _finetune_text() -> str:
    """The paragraph's sentences in reverse order: the same characters and words, another text."""
    sentences = [s.strip() + '.' for s in PARAGRAPH.split('.') if s.strip()]
    return ' '.join(reversed(sentences)) + '\n'


def _pretrain(project, epochs=1, **extra):
    train({**PRETRAIN, 'epochs': epochs, **extra}, name='source')
    (source,) = run_dirs(project, 'source')
    return source


def _first_step(monkeypatch):
    """What the model and the optimizer hold when the first training step starts."""
    seen = {}
    real = Trainer.train_step

    def train_step(self, data, target, *rest):
        if not seen:
            seen.update(weights={k: v.detach().clone() for k, v in self.model.state_dict().items()},
                        optimizer_state=len(self.optimizer.state), global_step=tracker.get_global_step())
        return real(self, data, target, *rest)
    monkeypatch.setattr(Trainer, 'train_step', train_step)
    return seen


def test_finetune_starts_from_the_source_weights_and_nothing_else(project, monkeypatch, capsys):
    source = _pretrain(project)
    step = runs.checkpoint_steps(source)[-1]
    # every 'z' gone: a vocabulary rebuilt from this text would move the ids after 'y'
    (project / 'finetune.txt').write_text(_finetune_text().replace('z', 'y') * 12)

    seen = _first_step(monkeypatch)
    train({**FINETUNE, 'init_from': source.name[:8]}, name='tuned')
    (tuned,) = run_dirs(project, 'tuned')

    # the weights at step 0 are the source checkpoint's, exactly
    saved = weights(runs.find_checkpoint(source))
    assert seen['weights'].keys() == saved.keys()
    for k in saved:
        assert torch.equal(seen['weights'][k], saved[k]), k
    # the optimizer, and labml's step counter, start fresh
    assert seen['optimizer_state'] == 0
    assert seen['global_step'] == 0
    assert min(s for s, _ in read_scalars(tuned, 'loss.train')) < step
    # the tokenizer is the source's; the configs record the source, resolved from the prefix
    assert (tuned / 'tokenizer.json').read_text() == (source / 'tokenizer.json').read_text()
    configs = yaml.safe_load((tuned / 'configs.yaml').read_text())
    assert configs['init_from']['value'] == f'{source.name}:{step}'
    assert configs['transformer.d_model']['value'] == TINY['transformer.d_model']

    # a fine-tuned run resumes, and generates, from its own checkpoints, without its source
    shutil.rmtree(source)
    train({'epochs': 2}, resume=tuned.name)
    assert len(run_dirs(project, 'tuned')) == 2
    capsys.readouterr()
    assert generate_run(['--run', tuned.name, '--prompt', 'It is', '--max-new-tokens', '4']) == 0, \
        capsys.readouterr().err


@pytest.mark.slow
def test_finetuned_run_beats_the_same_run_from_scratch(project):
    source = _pretrain(project, epochs=4)
    (project / 'finetune.txt').write_text(_finetune_text() * 12)

    train({**FINETUNE, 'init_from': source.name}, name='tuned')
    # from scratch: the same configs, with the source's shape given explicitly
    shape = {k: v for k, v in TINY.items() if k.startswith('transformer.')}
    train({**FINETUNE, **shape}, name='scratch')

    (tuned,), (scratch,) = run_dirs(project, 'tuned'), run_dirs(project, 'scratch')
    tuned_loss, scratch_loss = read_scalars(tuned, 'loss.valid')[-1][1], read_scalars(scratch, 'loss.valid')[-1][1]
    assert tuned_loss < scratch_loss - 0.3, (tuned_loss, scratch_loss)


def test_a_bpe_source_encodes_any_new_text(project):
    source = _pretrain(project, tokenizer='bpe', bpe_vocab_size=300)
    # characters the source never saw: its byte-level BPE still encodes them
    (project / 'finetune.txt').write_text(('Quixotic zebras juggle xylophones! ' + _finetune_text()) * 12)
    train({**FINETUNE, 'init_from': source.name}, name='tuned')
    (tuned,) = run_dirs(project, 'tuned')
    assert (tuned / 'tokenizer.json').read_text() == (source / 'tokenizer.json').read_text()


BAD = [
    (['init_from=nosuchrun'], ["error: init_from: no run 'nosuchrun'"]),
    (['init_from={run}:12'], ['has no checkpoint at step 12']),
    (['init_from={run}:last'], ['the step after ":" must be a checkpoint step']),
    (['init_from={damaged}'], ['model.safetensors is truncated']),
    (['init_from={run}', 'transformer.d_model=64'],
     ["transformer.d_model=64 contradicts run {run}, which has transformer.d_model=32: "
      "init_from takes the model's shape from the source run"]),
    (['init_from={run}', 'tokenizer=bpe'], ['tokenizer=bpe contradicts run']),
    (['init_from={run}', 'text=strange.txt'], ["strange.txt has characters that are not in the vocabulary of the run it continues from: 'Q'"]),
    (['init_from={run}', '--resume', '{run}'], ['give one']),
]


def test_bad_init_from_is_one_line(project, capsys):
    source = _pretrain(project)
    (project / 'finetune.txt').write_text(_finetune_text() * 12)
    # a character the source's vocabulary lacks
    (project / 'strange.txt').write_text(_finetune_text().replace('apples', 'Quinces') * 12)
    # a copy of the source whose model file is cut in half
    damaged = source.parent / (source.name[:-4] + 'dead')
    shutil.copytree(source, damaged)
    model = runs.find_checkpoint(damaged) / 'model.safetensors'
    model.write_bytes(model.read_bytes()[:model.stat().st_size // 2])

    for extra, fragments in BAD:
        args = [a.format(run=source.name, damaged=damaged.name) for a in extra]
        capsys.readouterr()
        assert run(['text=finetune.txt', 'epochs=1', 'inner_iterations=1', *args, '--name', 'tuned']) == 2, args
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith('error: '), (args, err)
        for fragment in fragments:
            assert fragment.format(run=source.name) in err[0], (args, err)
        # refused before a run folder is written
        assert run_dirs(project, 'tuned') == [], args
