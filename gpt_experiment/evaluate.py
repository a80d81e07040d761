"""
# Evaluate a checkpoint on a text

```
gpt-evaluate [--run RUN] [--checkpoint STEP] [--text FILE] [--json] [--stride S] [--batch-size B] [--device D]
```

scores every token of a held-out UTF-8 text (by default the run's own validation split) with a
run's checkpoint (by default the newest run's newest), through the run's own tokenizer and
context (`seq_len`), and reports

* the **mean loss**, the cross-entropy in nats per token;
* the **perplexity**, $e^{\text{loss}}$;
* **bits per character**, the total cross-entropy in bits over the characters of the scored
  tokens;
* **bits per byte**, the same over their UTF-8 bytes. Two runs with different tokenizers
  (characters, BPE) have losses per *token* that cannot be compared, but both spend bits on the
  same bytes: compare runs with bits per byte.

A text longer than the context is scored with a **sliding window**: the first window scores all
of its tokens; each next window moves by `--stride` tokens (default half the context) and scores
only the tokens it adds, with the `seq_len - stride` tokens before them as context. Every token
but the first (which has nothing to be predicted from) is scored exactly once.

A file that is not UTF-8, or that has characters the run's tokenizer cannot encode (a character
vocabulary misses them), is one line on stderr and exit status 2; a loss that is not finite
(damaged weights) is one line and exit status 3.
"""

import contextlib
import io
import json
import math
import sys
from typing import Dict, List, Optional

from . import commands, console, files, tokenizers
from .errors import LossNotFinite, UserError


def parser() -> commands.Parser:
    p = commands.Parser(prog='gpt-evaluate', description="Loss, perplexity, bits per character and per byte "
                                                "of a checkpoint on a text.")
    p.add_argument('--run', help='run uuid, or a unique prefix of one (default: the newest run with a checkpoint)')
    p.add_argument('--checkpoint', type=int, default=None, help='global step of the checkpoint (default: newest)')
    p.add_argument('--text', help="UTF-8 text file to score (default: the run's own validation split)")
    p.add_argument('--json', action='store_true', help='print the results as one JSON object')
    p.add_argument('--stride', type=int, default=None, help='tokens each window moves by (default: seq_len // 2)')
    p.add_argument('--batch-size', type=int, default=16, help='windows scored at once')
    p.add_argument('--device', default='cpu')
    return p


def windows(n_tokens: int, seq_len: int, stride: int) -> List[tuple]:
    """
    `(start, end, first)` of each window over `n_tokens` tokens: it reads tokens `start..end-1`
    and scores the predictions of tokens `first..end-1` (each predicted from those before it).
    """
    out, start, scored = [], 0, 1
    while scored < n_tokens:
        end = min(start + seq_len + 1, n_tokens)
        out.append((start, end, scored))
        scored = end
        # the last window is a whole one, ending at the last token
        start = min(start + stride, max(n_tokens - seq_len - 1, 0))
    return out


def total_loss(model, ids, seq_len: int, stride: int, batch_size: int, device) -> float:
    """The summed cross-entropy (nats) of every token of `ids` but the first, window by window."""
    import torch
    import torch.nn.functional as F
    spans = windows(len(ids), seq_len, stride)
    total = torch.zeros((), dtype=torch.float64, device=device)
    # Windows of the same length go through the model together.
    for done in range(0, len(spans), batch_size):
        batch = spans[done:done + batch_size]
        for length in sorted({end - start for start, end, _ in batch}):
            same = [s for s in batch if s[1] - s[0] == length]
            # `[seq, batch]`: the model is sequence first
            tokens = torch.stack([ids[start:end] for start, end, _ in same], dim=1).to(device)
            with torch.no_grad():
                logits = model(tokens[:-1])[0].float()
            nll = F.cross_entropy(logits.flatten(0, 1), tokens[1:].flatten(), reduction='none').view(length - 1, -1)
            # Only the tokens this window adds: position `i` of the window predicts token `start + i + 1`.
            for column, (start, _, first) in enumerate(same):
                total += nll[first - start - 1:, column].sum()
        console.progress('Evaluate', min(done + batch_size, len(spans)), len(spans))
    return total.item()


def evaluate(model, tokenizer, text: str, *, seq_len: int, stride: int, batch_size: int = 16,
             device='cpu', ids=None) -> Dict[str, float]:
    """
    The mean loss, perplexity, bits per token, per character and per byte of `text`, scored as
    the token `ids` given (a run's own validation split, as it was split) or as `text` encodes.
    """
    import torch
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long) if ids is None else ids
    if len(ids) < 2:
        raise UserError(f'the text has {len(ids)} token(s); scoring needs at least 2')
    nats = total_loss(model, ids, seq_len, stride, batch_size, device)
    # The first token is not scored: count the characters and bytes of the others.
    first = tokenizer.decode(ids[:1].tolist())
    characters = len(text) - len(first)
    n_bytes = len(text.encode('utf-8')) - len(first.encode('utf-8'))
    loss = nats / (len(ids) - 1)
    bits = nats / math.log(2)
    return {'tokens': len(ids) - 1, 'characters': characters, 'bytes': n_bytes, 'loss': loss,
            'perplexity': math.exp(loss), 'bits_per_token': loss / math.log(2),
            'bits_per_character': bits / characters, 'bits_per_byte': bits / n_bytes}


@commands.command
def run(argv: Optional[List[str]] = None) -> int:
    """`gpt-evaluate` and `python -m gpt_experiment.evaluate`."""
    args = parser().parse_args(commands.argv_of(argv))
    # imported once the arguments are parsed, so that `--help` answers at once
    with commands.held_signals():
        import numpy as np
        import torch
        from labml import experiment
        from . import runs
    if args.batch_size < 1:
        raise UserError(f'--batch-size must be at least 1, got {args.batch_size}')
    # labml reports what it builds on stdout, which is the results'
    with contextlib.redirect_stdout(io.StringIO()):
        experiment.create(name='evaluate', python_file=runs.project_path(), writers=set())
        run_dir, checkpoint = runs.find(args.run, args.checkpoint)
        model, conf, tokenizer = runs.load_model(run_dir, checkpoint, args.device)
        if args.text is not None:
            text, name, ids = files.read_text(args.text, max_bytes=1 << 30), args.text, None
        else:
            # The run's own validation split, read and split as the run did, with its tokenizer:
            # its tokens are scored as they are, and decoded once for the characters and bytes.
            conf._run_tokenizer = tokenizer
            ids = torch.from_numpy(np.asarray(conf.text.valid, dtype=np.int64))
            text, name = tokenizer.decode(ids.tolist()), f'the validation split of {conf.text.name}'
    if ids is None:
        tokenizers.check_encodable(tokenizer, text, name, " of the run's tokenizer")
    stride = conf.seq_len // 2 if args.stride is None else args.stride
    if not 1 <= stride <= conf.seq_len:
        raise UserError(f'--stride must be in [1, {conf.seq_len}], got {stride}')
    results = evaluate(model, tokenizer, text, seq_len=conf.seq_len, stride=stride,
                       batch_size=args.batch_size, device=next(model.parameters()).device, ids=ids)
    if not math.isfinite(results['loss']):
        raise LossNotFinite(f'the loss on {name} is not finite: the weights of {checkpoint} are damaged')
    results = {'run': runs.uuid_of(run_dir), 'name': run_dir.parent.name, 'checkpoint': int(checkpoint.name),
               'text': name, 'seq_len': conf.seq_len, 'stride': stride, **results}
    print(json.dumps(results, allow_nan=False) if args.json else format_results(results))
    return 0


def format_results(r: Dict) -> str:
    lines = [('run', f"{r['name']}/{r['run']}, checkpoint {r['checkpoint']:,}"),
             ('text', f"{r['text']} ({r['tokens']:,} tokens scored, context {r['seq_len']}, stride {r['stride']})"),
             ('loss', f"{r['loss']:.4f} nats per token"),
             ('perplexity', f"{r['perplexity']:.3f}"),
             ('bits per char', f"{r['bits_per_character']:.4f}"),
             ('bits per byte', f"{r['bits_per_byte']:.4f}")]
    return '\n'.join(f'{k + ":":<15}{v}' for k, v in lines)


if __name__ == '__main__':
    sys.exit(run())
