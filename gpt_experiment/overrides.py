"""
# Overrides

`python -m gpt_experiment.main [PRESET.yaml ...] [key=value ...]` builds one dictionary of
overrides for labml's `experiment.configs(conf, overrides)`: presets first, then `key=value`
arguments, later ones winning.

Nothing here is a second configuration system: the keys, their types, defaults and options
are read from the labml `Configs` classes themselves (including nested ones such as
`transformer.ffn`), and values are only *parsed* to the declared type before labml gets them.
An unknown key, a value of the wrong type or an option that is not registered is a
`UserError` with a suggestion, never a traceback.
"""

import difflib
import inspect
import math
import re
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional

import yaml

from labml.configs import BaseConfigs

from . import checks, corpus, labml_glue
from .errors import UserError


class Key(NamedTuple):
    """A config key as labml declares it, and the comment above its declaration."""
    type: Any
    default: Any
    options: List[str]
    help: str = ''


def _sub_configs(value_type, default, options) -> Optional[type]:
    """The configs class a key expands into (`transformer.*`, `optimizer.*`, `device.*`), if any."""
    if isinstance(default, BaseConfigs):
        return type(default)
    if inspect.isclass(value_type) and issubclass(value_type, BaseConfigs):
        return value_type
    # An option (such as `optimizer`'s) that declares it returns configs.
    chosen = options.get(default) or next(iter(options.values()), None)
    returns = typing.get_type_hints(chosen.func).get('return') if chosen is not None else None
    if inspect.isclass(returns) and issubclass(returns, BaseConfigs):
        return returns
    return None


# Keys that the experiment computes from others (the vocabulary from the corpus, the widths of
# nested configs from `transformer.d_model`), and labml's own machinery: neither listed by
# `--help` nor set from outside.
INTERNAL = {
    'n_tokens', 'd_model', 'transformer.n_src_vocab', 'transformer.n_tgt_vocab', 'transformer.ffn.d_model',
    'optimizer.d_model', 'loop_step', 'loop_count', 'model', 'train_model', 'grad_scaler', 'state_modules',
    'trainer', 'validator', 'training_loop', 'device', 'device.device', 'device.device_info', 'transformer',
    'optimizer', 'optimizer.weight_decay_obj', 'train_loader', 'valid_loader', 'transformer.encoder',
    'transformer.decoder', 'transformer.encoder_decoder', 'transformer.generator', 'transformer.decoder_layer',
    'transformer.decoder_attn', 'transformer.decoder_mem_attn', 'transformer.tgt_embed', 'transformer.ffn',
    'transformer.ffn.ffn', 'dataloader_shuffle_with_replacement', 'is_loop_on_interrupt', 'optimizer.rho',
}


def _comments(configs_class: type) -> Dict[str, str]:
    """
    The `#` comment above each field of a configs class and of its bases (labml_nn writes one
    above every field), as one line: what `--help` says of the key.
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
                found[field.group(1)] = ' '.join(comment)
            comment = []
    return found


def config_keys(configs_class: type, prefix: str = '') -> Dict[str, Key]:
    """Every key that can be overridden, with dotted names for nested configs."""
    types, defaults, options, aggregates = labml_glue.configs_registry(configs_class())
    comments = _comments(configs_class)
    keys = {}
    for name, value_type in types.items():
        default = defaults.get(name)
        opts = list(options.get(name, {})) + sorted(aggregates.get(name, ()))
        keys[prefix + name] = Key(value_type, default, opts, comments.get(name, ''))
        sub = _sub_configs(value_type, default, options.get(name, {}))
        if sub is not None:
            keys.update(config_keys(sub, f'{prefix}{name}.'))
    return keys


_TRUE = {'true', 'yes', 'on', '1'}
_FALSE = {'false', 'no', 'off', '0'}


def _parse(key: str, value: Any, spec: Key):
    """Parse `value` (a string from the command line, or a YAML/Python value) to the key's type."""
    if isinstance(value, str) and value in spec.options:
        return value
    t = spec.type
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if t is int:
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
        if t is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise UserError(f'{key} must be a finite number, got {value!r}')
            return number
        if t is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if typing.get_origin(t) is tuple:
            items = _safe_yaml(value, key) if isinstance(value, str) else value
            item_types = typing.get_args(t)
            if not isinstance(items, (list, tuple)) or len(items) != len(item_types):
                raise ValueError
            return tuple(_parse(key, v, Key(it, None, [])) for v, it in zip(items, item_types))
    except (ValueError, TypeError, OverflowError, yaml.YAMLError):
        raise UserError(f'{key} expects {_type_name(t)}, got {_short(value)}') from None
    if spec.options:
        raise UserError(f'{key}={_short(value)} is not a registered option; choose one of: {", ".join(spec.options)}')
    raise UserError(f'{key} is computed and cannot be set')


def _short(value: Any) -> str:
    """`repr(value)`, cut to 80 characters: a value in a message, never the message itself."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def _type_name(t) -> str:
    return getattr(t, '__name__', None) or str(t).replace('typing.', '')


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


def check_overrides(configs_class: type, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """
    Validate a dictionary of overrides against the declared keys and parse every value to its
    type. `text=<path>` (a path rather than a registered option) becomes `text=file` with
    `text_file=<path>`, and likewise for `valid_text`.
    """
    keys = config_keys(configs_class)
    checked = {}
    for key, value in _flatten(overrides).items():
        if key in ('text', 'valid_text') and isinstance(value, str) and value not in keys['text'].options:
            if key == 'text':
                checked['text'] = 'file'
            key = f'{key}_file'
        if key not in keys:
            raise UserError(f"unknown config key '{key}'{suggest(key, set(keys) - INTERNAL)}")
        if key in INTERNAL:
            raise UserError(f'{key} is computed by the experiment and cannot be set')
        checked[key] = _parse(key, value, keys[key])
        checks.check_value(key, checked[key])
    return checked


def load_yaml(path: str) -> Dict[str, Any]:
    """A preset: a YAML mapping of config keys to values."""
    p = Path(path)
    if not p.exists():
        raise UserError(f'config file not found: {path}')
    try:
        values = _safe_yaml(corpus.regular_file(p).read_text(encoding='utf-8'), path)
    except UnicodeDecodeError as e:
        raise UserError(f'{path} is not valid YAML: {e}') from None
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


def _settable(spec: Key) -> bool:
    return bool(spec.options) or spec.type in (bool, int, float, str) or typing.get_origin(spec.type) is tuple


# What `--help` says of labml's keys that have no comment in labml's own sources
LABML_HELP = {
    'device.cuda_device': 'The CUDA device to train on', 'device.use_cuda': 'Whether to train on CUDA when there is one',
    'is_track_time': "Whether labml tracks the time each step takes",
    'save_models_interval': 'Tokens between checkpoints (labml saves at the end of each epoch at most)',
    'log_new_line_interval': 'Tokens between new lines of the console output',
    'log_write_interval': "Tokens between writes of labml's tracked values",
}


def describe(configs_class: type, overrides: Optional[Dict[str, Any]] = None,
             effective_defaults: Optional[Dict[str, Any]] = None) -> str:
    """
    The `--help` listing: every key a user can set, with what a run would use (the `overrides`
    given with `--help`, else `effective_defaults`, what the options set in nested configs, else
    the declared default), its registered options, and the comment above its declaration.
    """
    overrides, effective_defaults = overrides or {}, effective_defaults or {}
    lines = []
    for key, spec in sorted(config_keys(configs_class).items()):
        if key in INTERNAL or not _settable(spec):
            continue
        value = overrides.get(key, effective_defaults.get(key, spec.default))
        value = value if value is not None else (spec.options[0] if spec.options else '(computed)')
        kind = 'option' if spec.options else _type_name(spec.type)
        line = f'  {key:<36} {kind:<6} {value}'
        if spec.options:
            line += f'   (options: {", ".join(spec.options)})'
        lines.append(line)
        lines.append(f'      {spec.help or LABML_HELP.get(key, "")}'.rstrip())
    return '\n'.join(lines)
