"""
# Overrides

`gpt-train [PRESET.yaml ...] [key=value ...]` builds one dictionary of overrides for labml's
`experiment.configs(conf, overrides)`: presets first, then `key=value` arguments (nanoGPT's
`--key=value` too), later ones winning.

Nothing here is a second configuration system: the keys, their types, defaults and options are
read from the labml `Configs` classes themselves (including nested ones such as
`transformer.ffn`), and values are only *parsed* to the declared type and checked against
their range before labml gets them. An unknown key, a value of the wrong type or out of range,
or an option that is not registered is a `UserError` with a suggestion, never a traceback.

**The key table.** Reading the keys means importing `Configs`, and with it torch and labml_nn,
which takes seconds. So the keys are also written down, once, in `keys.json` beside this file
(`write_key_table`), and `--help` and the parsing of a command line read that; a test keeps
the table equal to what `Configs` declares.
"""

import difflib
import functools
import inspect
import json
import math
import re
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Union

import yaml

from . import files
from .errors import UserError


class Key(NamedTuple):
    """
    A config key as labml declares it: its kind (`int`, `float`, `bool`, `str`, `floats2` for
    two numbers, `option`, or `computed` when nothing can be given), the value a run has when
    it is not given, the registered options, and the comment above its declaration.
    """
    kind: str
    default: Any
    options: List[str]
    help: str = ''


# Keys that the experiment computes from others (the vocabulary from the corpus, the widths of
# nested configs from `transformer.d_model`), and labml's own machinery: neither listed by
# `--help` nor set from outside.
INTERNAL = {
    'n_tokens', 'd_model', 'transformer.n_src_vocab', 'transformer.n_tgt_vocab', 'transformer.ffn.d_model',
    'optimizer.d_model', 'model', 'train_model', 'grad_scaler', 'schedule', 'device', 'device.device',
    'device.device_info', 'transformer', 'optimizer', 'optimizer.weight_decay_obj', 'train_loader', 'valid_loader',
    'transformer.encoder', 'transformer.decoder', 'transformer.encoder_decoder', 'transformer.generator',
    'transformer.decoder_layer', 'transformer.decoder_attn', 'transformer.decoder_mem_attn', 'transformer.tgt_embed',
    'transformer.ffn', 'transformer.ffn.ffn', 'optimizer.rho', 'optimizer.parameters', 'optimizer.hidden_matrices',
    'mode', 'accuracy',
    'loss_func',
}
# labml's keys that the [trainer](trainer.html)'s own loop does not read: labml_helpers' loop
# (the warm-up and the length of the schedule are `warmup_steps` and `epochs`), and the
# optimizer keys of labml_nn's optimizers that are not offered here. Setting one would change
# nothing, so it is refused.
UNUSED = {
    'loop_step', 'loop_count', 'state_modules', 'trainer', 'validator', 'training_loop', 'is_loop_on_interrupt',
    'log_new_line_interval', 'log_write_interval', 'save_models_interval', 'is_track_time',
    'dataloader_shuffle_with_replacement', 'optimizer.warmup', 'optimizer.total_steps', 'optimizer.momentum',
    'optimizer.degenerate_to_sgd', 'optimizer.rectify',
}

# What `--help` says of labml's keys that have no comment in labml's own sources
LABML_HELP = {
    'device.cuda_device': 'The CUDA device to train on',
    'device.use_cuda': 'Whether to train on CUDA when there is one',
}


# ## Reading the keys from the configs classes

def _kind(value_type, options) -> str:
    if options:
        return 'option'
    if value_type in (int, float, bool, str):
        return value_type.__name__
    if typing.get_origin(value_type) is tuple and all(a is float for a in typing.get_args(value_type)):
        return f'floats{len(typing.get_args(value_type))}'
    return 'computed'


def _plain(comment: str) -> str:
    """A comment of labml_nn's as plain text: links as their words, LaTeX as its letters."""
    comment = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', comment)
    comment = re.sub(r'\$([^$]*)\$', lambda m: re.sub(r'\\(\w+)|[{}\\]', r'\1', m.group(1)), comment)
    return ' '.join(comment.split())


@functools.lru_cache(maxsize=None)
def _comments(configs_class: type) -> Dict[str, str]:
    """
    The `#` comment above each field of a configs class and of its bases (labml_nn writes one
    above every field), as one line: what `--help` says of the key. Read from the sources
    once a process (parsing them is most of a check's time).
    """
    found = {}
    for cls in reversed(inspect.getmro(configs_class)):
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            continue
        comment = []
        for line in lines:
            if line.strip().startswith('#'):
                comment.append(line.strip().lstrip('#').strip())
                continue
            # a field at the class's own level: `    name: type = value` or `    name = value`
            field = re.match(r'    (\w+)\s*[:=]', line)
            if field and comment:
                found[field.group(1)] = _plain(' '.join(comment))
            comment = []
    return found


def _sub_configs(value_type, default, options) -> Optional[type]:
    """The configs class a key expands into (`transformer.*`, `optimizer.*`, `device.*`), if any."""
    from labml.configs import BaseConfigs
    if isinstance(default, BaseConfigs):
        return type(default)
    if inspect.isclass(value_type) and issubclass(value_type, BaseConfigs):
        return value_type
    # An option (such as `optimizer`'s) that declares it returns configs.
    chosen = (options.get(default) if isinstance(default, str) else None) or next(iter(options.values()), None)
    returns = typing.get_type_hints(chosen.func).get('return') if chosen is not None else None
    if inspect.isclass(returns) and issubclass(returns, BaseConfigs):
        return returns
    return None


def config_keys(configs_class: type, prefix: str = '') -> Dict[str, Key]:
    """Every key of a configs class, with dotted names for nested configs, read from the class."""
    from . import labml_glue
    types, defaults, options, aggregates = labml_glue.configs_registry(configs_class())
    comments = _comments(configs_class)
    keys = {}
    for name, value_type in types.items():
        default = defaults.get(name)
        opts = list(options.get(name, {})) + sorted(aggregates.get(name, ()))
        keys[prefix + name] = Key(_kind(value_type, opts), default, opts, comments.get(name, ''))
        sub = _sub_configs(value_type, default, options.get(name, {}))
        if sub is not None:
            keys.update(config_keys(sub, f'{prefix}{name}.'))
    return keys


# ## The key table

KEY_TABLE = Path(__file__).with_name('keys.json')


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return None


def keys_of_configs() -> Dict[str, Key]:
    """
    The keys a user can give, as `Configs` declares them, with the value a run has when a key
    is not given: what the options set in nested configs (`sdpa` attention, GELU, GPT's betas),
    else the declared default, else the first option.
    """
    from .configs import GPT_TRANSFORMER, Configs
    from .optimizer import GPT_OPTIMIZER
    set_by_options = {**{f'transformer.{k}': v for k, v in GPT_TRANSFORMER.items()},
                      **{f'optimizer.{k}': v for k, v in GPT_OPTIMIZER.items()}}
    keys = {}
    for name, key in config_keys(Configs).items():
        default = set_by_options.get(name, key.default)
        if default is None and key.options:
            default = key.options[0]
        keys[name] = key._replace(default=_jsonable(default), help=key.help or LABML_HELP.get(name, ''))
    return keys


def write_key_table():
    """Write `keys.json` from `Configs` (after changing a key: the tests say when)."""
    table = {name: key._asdict() for name, key in sorted(keys_of_configs().items())}
    KEY_TABLE.write_text(json.dumps(table, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')


def key_table() -> Dict[str, Key]:
    """The keys of `keys.json`: what `Configs` declares, without importing it."""
    return {name: Key(**key) for name, key in json.loads(KEY_TABLE.read_text(encoding='utf-8')).items()}


# ## Parsing a value to its key's type

_TRUE = {'true', 'yes', 'on', '1'}
_FALSE = {'false', 'no', 'off', '0'}


def _parse(key: str, value: Any, spec: Key):
    """Parse `value` (a string from the command line, or a YAML/Python value) to the key's type."""
    if spec.kind == 'option':
        if isinstance(value, str) and value in spec.options:
            return value
        # YAML's `true` for an option named `true`
        if isinstance(value, bool) and str(value).lower() in spec.options:
            return str(value).lower()
        raise UserError(f'{key}={_short(value)} is not a registered option; choose one of: {", ".join(spec.options)}')
    try:
        if spec.kind == 'bool':
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if spec.kind == 'int':
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) and not value.lstrip('+-').isdigit() else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            number = int(number)
            # What a torch or NumPy integer holds; anything larger is a typo, not a size.
            if not -2 ** 63 <= number < 2 ** 63:
                raise UserError(f'{key}={number} is out of range: integers here are 64-bit')
            return number
        if spec.kind == 'float':
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise UserError(f'{key} must be a finite number, got {value!r}')
            return number
        if spec.kind == 'str':
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if spec.kind.startswith('floats'):
            # `[0.9, 0.95]` or, as Python writes it, `(0.9, 0.95)`
            if isinstance(value, str) and value.strip().startswith('(') and value.strip().endswith(')'):
                value = '[' + value.strip()[1:-1] + ']'
            items = _safe_yaml(value, key) if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or len(items) != int(spec.kind[6:]):
                raise ValueError
            return tuple(_parse(key, v, Key('float', None, [])) for v in items)
    except (ValueError, TypeError, OverflowError, yaml.YAMLError):
        raise UserError(f'{key} expects {_kind_name(spec.kind)}, got {_short(value)}') from None
    raise UserError(f'{key} is computed and cannot be set')


def _short(value: Any) -> str:
    """`repr(value)`, cut to 80 characters: a value in a message, never the message itself."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def _kind_name(kind: str) -> str:
    if kind.startswith('floats'):
        return f'{kind[6:]} numbers, as [{", ".join("0.9" for _ in range(int(kind[6:])))}]'
    return kind


# ## The range of each value
#
# After parsing, each value a user gives is checked against its range here, before anything is
# built; what depends on several values is checked on the computed configs ([checks](checks.html)).

# Keys whose values are counts or sizes, and the least each can be.
AT_LEAST = {
    'seq_len': 1, 'batch_size': 1, 'epochs': 1, 'inner_iterations': 1, 'log_interval': 1,
    'transformer.d_model': 1, 'transformer.n_heads': 1, 'transformer.n_layers': 1, 'transformer.ffn.d_ff': 1,
    'bpe_train_bytes': 1, 'sample_tokens': 0, 'micro_batch_size': 0, 'checkpoint_minutes': 0, 'keep_checkpoints': 0,
    'warmup_steps': 0, 'seed': 0, 'device.cuda_device': 0,
    # 0: the whole validation split
    'valid_batches': 0,
    # the 256 bytes of a byte-level BPE, and one merge
    'bpe_vocab_size': 257,
}
AT_MOST = {
    # what the Rust BPE trainer takes and token ids stored as 32-bit integers hold
    'bpe_vocab_size': (2 ** 24, 'the largest vocabulary the BPE trainer builds here'),
    # labml_nn's positional tables have this many rows
    'seq_len': (5000, "labml_nn's positional tables have 5,000 rows"),
}
# Rates and sizes of the optimizer that must be above 0, or at least 0
POSITIVE = ('learning_rate', 'optimizer.learning_rate', 'optimizer.eps', 'grad_norm_clip', 'optimizer.muon_lr_scale')
NON_NEGATIVE = ('weight_decay', 'optimizer.weight_decay')
# Probabilities of dropping, in [0, 1)
DROPOUTS = ('transformer.dropout', 'transformer.ffn.dropout', 'embedding_dropout')


def check_value(key: str, value):
    """The range of one value that a user gives (the defaults are all in range)."""
    if key in AT_LEAST and value < AT_LEAST[key]:
        least = AT_LEAST[key]
        raise UserError(f'{key} must be {"positive" if least == 1 else f"at least {least}"}, got {value}')
    if key in AT_MOST and value > AT_MOST[key][0]:
        most, why = AT_MOST[key]
        raise UserError(f'{key} must be at most {most:,} ({why}), got {value:,}')
    if key in POSITIVE and not value > 0:
        raise UserError(f'{key} must be positive, got {value}')
    if key in NON_NEGATIVE and value < 0:
        raise UserError(f'{key} must be at least 0, got {value}')
    if key in DROPOUTS and not 0 <= value < 1:
        raise UserError(f'{key} must be in [0, 1), got {value}')
    # Adam's moments are running averages: each beta must be in [0, 1).
    if key == 'optimizer.betas' and not all(0 <= b < 1 for b in value):
        raise UserError(f'optimizer.betas must each be in [0, 1), got {list(value)}')
    if isinstance(value, str) and not value.isprintable():
        raise UserError(f'{key} must be printable text, got {_short(value)}')


# ## Overrides

def suggest(key: str, keys: Iterable[str]) -> str:
    """`'; did you mean ...?'` for the closest known key, or nothing."""
    keys = list(keys)
    tail = key.rsplit('.', 1)[-1]

    def score(k: str) -> float:
        # The best of the whole name and the last part alone (`n_layers` -> `transformer.n_layers`),
        # a little ahead when the last parts agree exactly.
        whole = difflib.SequenceMatcher(None, key, k).ratio()
        part = difflib.SequenceMatcher(None, tail, k.rsplit('.', 1)[-1]).ratio()
        return max(whole, part + (0.1 if part == 1 else 0))

    best = max(keys, key=score, default=None)
    return f"; did you mean '{best}'?" if best is not None and score(best) >= 0.6 else ''


def _flatten(d: Dict, prefix: str = '') -> Dict[str, Any]:
    """`{'transformer': {'n_layers': 2}}` -> `{'transformer.n_layers': 2}`."""
    out = {}
    for k, v in d.items():
        if not isinstance(k, str):
            raise UserError(f'config keys must be strings, got {k!r}')
        if isinstance(v, dict):
            out.update(_flatten(v, f'{prefix}{k}.'))
        else:
            out[prefix + k] = v
    return out


def check_overrides(keys: Union[type, Dict[str, Key], None], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """
    Validate a dictionary of overrides against the declared keys (of a configs class, or the
    key table when `None`) and parse every value to its type. `text=<path>` (a path rather than
    a registered option) becomes `text=file` with `text_file=<path>`, and likewise for
    `valid_text`.
    """
    keys = key_table() if keys is None else keys if isinstance(keys, dict) else config_keys(keys)
    checked = {}
    for key, value in _flatten(overrides).items():
        if key in ('text', 'valid_text') and isinstance(value, str) and value not in keys['text'].options:
            if key == 'text':
                checked['text'] = 'file'
            key = f'{key}_file'
        if key not in keys:
            raise UserError(f"unknown config key '{key}'{suggest(key, set(keys) - INTERNAL - UNUSED)}")
        if key in INTERNAL:
            raise UserError(f'{key} is computed by the experiment and cannot be set')
        if key in UNUSED:
            raise UserError(f"{key} is labml's but this trainer does not use it; see --help for the keys it reads")
        checked[key] = _parse(key, value, keys[key])
        check_value(key, checked[key])
    return checked


def load_yaml(path: str) -> Dict[str, Any]:
    """A preset: a YAML mapping of config keys to values."""
    p = Path(path)
    if not p.exists():
        raise UserError(f'config file not found: {path}')
    values = _safe_yaml(files.read_text(p, max_bytes=1024 * 1024), path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f'{path} must be a mapping of config keys to values, not a {type(values).__name__}')
    return _flatten(values)


class _PresetLoader(yaml.SafeLoader):
    """
    YAML without aliases of lists or mappings. Aliases of scalars (`lr: &lr 1e-3`, then `*lr`)
    are fine; an alias of a collection is what makes a recursive structure, or an "alias bomb"
    that a few lines expand into billions of items, and no preset needs one.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None and not isinstance(node, yaml.ScalarNode):
                raise yaml.composer.ComposerError(None, None, f'the alias *{event.anchor} is of a list or mapping, '
                                                  f'which presets do not take', event.start_mark)
        return super().compose_node(parent, index)


def _safe_yaml(text: str, name: str) -> Any:
    """Parse YAML (a preset, or a value on the command line), refusing aliases of collections."""
    try:
        return yaml.load(text, Loader=_PresetLoader)
    except yaml.YAMLError as e:
        detail = ' '.join(str(e).split())
        raise UserError(f'{name} is not valid YAML: {detail}') from None


def overrides_from_args(items: List[str]) -> Dict[str, Any]:
    """Presets and `key=value` arguments, in order, into one dictionary (later wins)."""
    overrides = {}
    for item in items:
        if '=' in item:
            key, value = item.split('=', 1)
            if not key:
                raise UserError(f'missing key in {item!r}; write key=value')
            overrides[key] = value
        elif item.endswith(('.yaml', '.yml')) or Path(item).is_file():
            overrides.update(load_yaml(item))
        else:
            raise UserError(f'{item!r} is neither a YAML preset nor key=value')
    return overrides


def describe(given: Optional[Dict[str, Any]] = None) -> str:
    """
    The `--help` listing, from the key table: every key a user can set, with what a run would
    use (the overrides `given` with `--help`, else what it has by default), its registered
    options, and the comment above its declaration.
    """
    keys = key_table()
    overrides = check_overrides(keys, given or {})
    lines = []
    for name, spec in sorted(keys.items()):
        if name in INTERNAL or name in UNUSED or spec.kind == 'computed':
            continue
        value = overrides.get(name, spec.default)
        value = value if value is not None else '(computed)'
        kind = 'floats' if spec.kind.startswith('floats') else spec.kind
        line = f'  {name:<36} {kind:<6} {value}'
        if spec.options:
            line += f'   (options: {", ".join(spec.options)})'
        lines.append(line)
        lines.append(f'      {spec.help}'.rstrip())
    return '\n'.join(lines)
