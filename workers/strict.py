"""Strict loading: a model loads completely, or not at all.

transformers fills parameters missing from a checkpoint with random values and
only logs a warning; a model served that way returns confident nonsense. Every
family loads its weights through here, and any missing, unexpected or
mis-shaped weight stops the load with a :class:`ConfigError` naming the model
and the weights. A missing package is named too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from embedstream.errors import ConfigError

#: Weights a family may lack or carry without harm, by what it reads from the model:
#: hidden states never touch the pooler or a language-model head.
HARMLESS = {
    "AutoModel": {"missing": ("pooler.",), "unexpected": ("pooler.", "cls.", "lm_head.")},
}
#: How many weight names a refusal lists before "and N more".
SHOWN = 8


def pretrained(auto: str, folder: str, name: str, **kwargs: Any) -> Any:
    """``transformers.<auto>.from_pretrained(folder)``, refused unless every weight matched."""
    import transformers

    model, info = getattr(transformers, auto).from_pretrained(folder, output_loading_info=True, **kwargs)
    harmless = HARMLESS.get(auto, {})
    check(
        name,
        f"{type(model).__name__} from {folder}",
        missing=_real(info.get("missing_keys", ()), harmless.get("missing", ())),
        unexpected=_real(info.get("unexpected_keys", ()), harmless.get("unexpected", ())),
        mismatched=[str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ())],
        errors=[str(e) for e in info.get("error_msgs", ())],
    )
    return model


def state_dict(module: Any, state: dict[str, Any], name: str, what: str) -> None:
    """Load ``state`` into ``module``, refused unless its keys and shapes are exactly the module's."""
    own = module.state_dict()
    check(
        name,
        what,
        missing=sorted(set(own) - set(state)),
        unexpected=sorted(set(state) - set(own)),
        mismatched=sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)),
    )
    module.load_state_dict(state)


def check(
    name: str,
    what: str,
    missing: Iterable[str] = (),
    unexpected: Iterable[str] = (),
    mismatched: Iterable[str] = (),
    errors: Iterable[str] = (),
) -> None:
    """Raise a ConfigError naming the model and every weight that did not match."""
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
        found = sorted(keys)
        if found:
            more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
            problems.append(f"{label} weights {', '.join(found[:SHOWN])}{more}")
    problems += list(errors)
    if problems:
        raise ConfigError(
            f"model {name}: {what} does not match its checkpoint: {'; '.join(problems)} "
            "(a model with random or ignored weights is never served)"
        )


def missing_package(name: str, exc: ImportError) -> ConfigError:
    """The refusal for a package the model needs but this machine lacks."""
    # transformers raises ImportError("X requires the rjieba library ...") without a name.
    text = " ".join(str(exc).split())
    found = re.search(r"requires the (\S+) library", text)
    package = exc.name or (found.group(1) if found else "")
    what = f"the Python package {package!r}" if package else "a Python package"
    return ConfigError(f"model {name}: needs {what}, which is not installed here ({text})")


def _real(keys: Iterable[str], harmless: tuple[str, ...]) -> list[str]:
    return sorted(k for k in keys if not k.startswith(harmless))
