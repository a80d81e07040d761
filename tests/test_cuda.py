"""
The CUDA path, on a GPU: the fast path computes labml_nn's attention in fp32, bf16 and fp16
(with its gradient scaler) train, PyTorch's fused Adam with the schedule makes labml_nn's CPU
update, compiled steps make eager ones, the key/value cache decodes what the full context
decodes, one process under torchrun trains through NCCL, and a run stopped and resumed repeats
a straight one.

Every test is marked `cuda` (`pytest -m cuda` runs them alone) and is skipped, with the reason,
where CUDA is not available.
"""

import os
import subprocess
import sys

import pytest
import torch

from gpt_experiment.trainer import StepMetrics
from gpt_experiment.sampling import generate as decode, make_sampler
from gpt_experiment import train

from conftest import REPO_ROOT, checkpoint_steps, read_scalars, run_dirs, write_project
from test_distributed import DDP, DRIVER
from test_fast_paths import _assert_follows, _train_pair
from test_generate import _random_model
from test_resume import RESUME, _chain, _curve, _params

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')]

CUDA = {'device.use_cuda': True}


@pytest.fixture
def recorded(monkeypatch):
    """`[(loss, logits dtype), ...]` of every training or validation step from now on."""
    steps = []
    add = StepMetrics.add

    def recording(self, step, loss, output, target):
        steps.append((loss.item(), output.dtype))
        add(self, step, loss, output, target)
    monkeypatch.setattr(StepMetrics, 'add', recording)
    return steps


def _losses(recorded):
    """The losses recorded so far, and none of them afterwards."""
    losses = [loss for loss, _ in recorded]
    recorded.clear()
    return losses


def _train_steps(conf, batches):
    """The trainer's own step (`Trainer.train_step`) over `batches`."""
    for x, y, _ in batches:
        conf.train_step(x, y)


def _assert_same_parameters(a, b):
    # Absolute, not relative: the key biases get no gradient (softmax ignores a shift that is
    # the same for every key), so Adam moves them by rounding noise alone, about 1e-6 from zero.
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-5, msg=name)


def test_fast_path_matches_labml_recipe_in_fp32(tiny_configs, recorded):
    """sdpa attention, batch first, on the GPU: labml_nn's attention's logits and updates."""
    shape = {**CUDA, 'transformer.n_layers': 2, 'learning_rate': 3e-3, 'warmup_steps': 256}
    stock = tiny_configs(**shape, **{'transformer.encoder_attn': 'mha'})
    fast = tiny_configs(**shape)
    assert fast.device.type == 'cuda' and fast.model.batch_first and not stock.model.batch_first
    assert fast.optimizer.param_groups[0]['fused']
    fast.model.load_state_dict(stock.model.state_dict())
    batches = list(fast.train_loader.epoch(0))[:10]

    x = batches[0][0]
    stock.model.eval(), fast.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast.model(x)[0], stock.model(x)[0], rtol=1e-5, atol=1e-5)

    _train_steps(stock, batches)
    stock_losses = _losses(recorded)
    _train_steps(fast, batches)
    fast_losses = _losses(recorded)
    assert stock_losses == pytest.approx(fast_losses, rel=1e-5)
    # and they trained: the last loss is well below the first
    assert fast_losses[-1] < fast_losses[0] - 0.3
    _assert_same_parameters(stock.model, fast.model)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_mixed_precision_training_lowers_the_loss(project, recorded, dtype):
    conf = train({**CUDA, 'text': 'corpus.txt', 'transformer.d_model': 32, 'transformer.n_heads': 2,
                 'transformer.n_layers': 1, 'transformer.ffn.d_ff': 64, 'seq_len': 16, 'batch_size': 8,
                 'epochs': 3, 'inner_iterations': 1, 'learning_rate': 3e-3, 'warmup_steps': 1024,
                 'is_save_models': False, 'dtype': dtype}, name=dtype)
    assert conf.device.type == 'cuda'
    # the forward pass ran in the low precision
    assert {d for _, d in recorded} == {getattr(torch, dtype)}
    (run_dir,) = run_dirs(project, dtype)
    losses = [v for _, v in read_scalars(run_dir, 'loss.train')]
    valid = [v for _, v in read_scalars(run_dir, 'loss.valid')]
    assert all(map(torch.isfinite, torch.tensor(losses + valid)))
    assert losses[-1] < 0.8 * losses[0] and valid[-1] < valid[0]
    # float16 steps through the gradient scaler, and its steps were not skipped
    assert conf.grad_scaler.is_enabled() == (dtype == 'float16')
    if dtype == 'float16':
        state = conf.grad_scaler.state_dict()
        assert state['scale'] >= 1 and state['_growth_tracker'] > 0


def test_fused_optimizer_on_cuda_makes_labml_cpu_update(monkeypatch):
    """Ten clipped steps of PyTorch's fused kernel on CUDA end where labml_nn's optimizer ends on the CPU."""
    devices = []
    for name in ('_fused_adam_', '_fused_adamw_'):
        kernel = getattr(torch, name)

        def spy(params, *args, _kernel=kernel, **kwargs):
            devices.append(params[0].device.type)
            return _kernel(params, *args, **kwargs)
        monkeypatch.setattr(torch, name, spy)
    stock, fused, *_ = _train_pair(True, max_norm=0.05, device='cuda')
    assert set(devices) == {'cuda'} and len(devices) == 20
    _assert_follows(stock, fused.cpu(), rel=1e-5, atol=1e-7)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_training_steps_do_not_wait_for_the_gpu(tiny_configs, dtype):
    """
    Between two reports a step only queues work on the GPU: nothing in it (the forward and
    backward passes, clipping, the fused optimizer, the metric sums) copies from the device or
    synchronises, so the host runs ahead of the GPU.
    """
    conf = tiny_configs(**CUDA, log_interval=1000, dtype=dtype)
    for i, (x, y, _) in enumerate(list(conf.train_loader.epoch(0))[:6]):
        # The first two steps set up cuBLAS and the optimizer's state.
        torch.cuda.set_sync_debug_mode('error' if i >= 2 else 'default')
        try:
            conf.train_step(x, y)
        finally:
            torch.cuda.set_sync_debug_mode('default')


def test_compiled_steps_match_eager_steps(tiny_configs, recorded):
    torch._dynamo.reset()
    shape = {**CUDA, 'transformer.n_layers': 2, 'learning_rate': 3e-3, 'warmup_steps': 256}
    eager = tiny_configs(**shape, compile=False)
    compiled = tiny_configs(**shape)
    # compile=auto compiles on CUDA
    assert compiled.compile is True
    compiled.model.load_state_dict(eager.model.state_dict())
    batches = list(eager.train_loader.epoch(0))[:8]
    _train_steps(eager, batches)
    eager_losses = _losses(recorded)
    _train_steps(compiled, batches)
    assert isinstance(compiled._compiled, torch._dynamo.eval_frame.OptimizedModule)
    compiled_losses = _losses(recorded)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    _assert_same_parameters(eager.model, compiled.model)


def test_greedy_decoding_with_the_cache_matches_decoding_without(tiny_configs):
    conf = tiny_configs(**CUDA)
    model = _random_model(conf)
    assert next(model.parameters()).is_cuda
    prompt = conf.text.text_to_i('It is a truth').cuda()
    greedy = make_sampler(temperature=0)
    for n, slide in ((conf.seq_len - len(prompt), None), (3 * conf.seq_len, 1)):
        uncached = list(decode(model, prompt, n_tokens=n, seq_len=conf.seq_len, sampler=greedy, use_cache=False))
        cached = list(decode(model, prompt, n_tokens=n, seq_len=conf.seq_len, sampler=greedy, slide=slide))
        assert cached == uncached


# After training, the driver also writes the backend its process group used.
NCCL_DRIVER = DRIVER.replace('distributed.teardown()',
                             'open("backend", "w").write(torch.distributed.get_backend())\ndistributed.teardown()')


def test_one_process_under_torchrun_trains_through_nccl(tmp_path, monkeypatch):
    project = write_project(tmp_path / 'project')
    (project / 'driver.py').write_text(NCCL_DRIVER, encoding='utf-8')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
    args = [f'{k}={v}' for k, v in {**DDP, **CUDA}.items()]
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1',
                             'driver.py', *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / 'backend').read_text() == 'nccl'
    (run,) = run_dirs(project, 'ddp')
    assert run.name.endswith('.0') and checkpoint_steps(run) == [230 * 18]
    trained = torch.load(project / 'rank0.pth', map_location='cpu', weights_only=True)

    # the same as one process without torchrun, on the same GPU
    monkeypatch.chdir(project)
    single = train({**DDP, **CUDA}, name='single').model.state_dict()
    assert trained.keys() == single.keys()
    differences = {k: (trained[k].float() - single[k].cpu().float()).abs().max().item() for k in single}
    assert max(differences.values()) <= 1e-5, differences


def test_a_run_stopped_and_resumed_on_cuda_repeats_the_straight_run(project, monkeypatch):
    straight = train({**RESUME, **CUDA}, name='straight', writers='sqlite')
    assert straight.device.type == 'cuda'
    folders, resumed = _chain(monkeypatch, [('step', 20), ('valid', 2)], overrides=CUDA)
    assert resumed.device.type == 'cuda'
    a, b = _params(straight), _params(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    (straight_dir,) = run_dirs(project, 'straight')
    # the same steps, with the same learning rates, and the same validations
    assert [sv for run in folders for sv in _curve(run, 'lr')] == _curve(straight_dir, 'lr')
    whole, joined = _curve(straight_dir, 'loss.valid'), [sv for run in folders for sv in _curve(run, 'loss.valid')]
    assert [s for s, _ in whole] == [s for s, _ in joined]
    assert [v for _, v in whole] == pytest.approx([v for _, v in joined], abs=1e-5)
