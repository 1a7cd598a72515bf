"""The reward-function protocol, :func:`score_rewards` and :func:`load_reward_functions` (command-line specs)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

import torch

from .._utils import check_unique_names

__all__ = ["RewardFunction", "load_reward_functions", "score_rewards"]


@runtime_checkable
class RewardFunction(Protocol):
    """Anything that scores responses to prompts.

    ``reward_fn(prompts, responses)`` takes two lists of equal length ``n`` (``responses[i]`` answers
    ``prompts[i]``; prompts are plain user text, not chat-formatted) and returns a float tensor of
    shape ``(n,)`` (one objective) or ``(n, G)`` (``G`` objectives). Higher is better.

    An instance may carry an ``objectives: list[str]`` attribute naming its output columns (length
    1 for ``(n,)`` outputs); :func:`score_rewards` uses it to name the columns, falling back to the
    function's name. Plain Python functions satisfy the protocol.
    """

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor: ...


def _reward_fn_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def _check_texts(prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str]]:
    for arg, value in (("prompts", prompts), ("responses", responses)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(
                f"`{arg}` must be a list of strings, got {type(value).__name__}; wrap a single text as [text]."
            )
        bad = [i for i, t in enumerate(value) if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"`{arg}[{bad[0]}]` is {type(value[bad[0]]).__name__}, expected str (decode token ids "
                "with tokenizer.batch_decode first)."
            )
    if len(prompts) != len(responses):
        raise ValueError(
            f"`prompts` and `responses` must have the same length (one prompt per response), got "
            f"{len(prompts)} and {len(responses)}; repeat each prompt once per response."
        )
    return list(prompts), list(responses)


# ------------------------------------------------------------------------------------------------ score_rewards
def score_rewards(
    reward_fns: Sequence[RewardFunction] | Mapping[str, RewardFunction] | RewardFunction,
    prompts: Sequence[str],
    responses: Sequence[str],
    objectives: Sequence[str] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Call one or several reward functions and stack their scores.

    Args:
        reward_fns: one reward function, a sequence of them (see :class:`RewardFunction`), or a
            mapping ``{name: reward_fn}`` whose keys name single-column outputs.
        prompts: ``n`` prompts (plain user text).
        responses: ``n`` responses, ``responses[i]`` answering ``prompts[i]``.
        objectives: optional names for the ``G`` stacked columns; overrides the names the reward
            functions carry.

    Returns:
        ``(rewards, names)``: a float32 CPU tensor of shape ``(n, G)`` and the ``G`` column names.
        Names come from ``objectives``, else each function's ``objectives`` attribute, else its
        name (suffixed ``_0, _1, ...`` for unnamed multi-column outputs in a sequence).

    Raises:
        TypeError: a reward function returned something that is not a tensor/array of numbers.
        ValueError: wrong output shape (naming the function and the shape it returned), NaN
            scores, mismatched ``objectives``, duplicate column names, or a mapping entry
            ``{name: fn}`` whose ``fn`` returns ``(n, k > 1)`` without an ``objectives`` attribute of
            length k (one name cannot name k objectives: give k names).
    """
    prompts, responses = _check_texts(prompts, responses)
    keys: list[str | None]
    if isinstance(reward_fns, Mapping):
        fns, keys = list(reward_fns.values()), [str(k) for k in reward_fns]
    else:
        fns = [reward_fns] if callable(reward_fns) and not isinstance(reward_fns, Sequence) else list(reward_fns)
        keys = [None] * len(fns)
    if not fns:
        raise ValueError("`reward_fns` is empty; pass at least one reward function.")
    columns: list[torch.Tensor] = []
    names: list[str] = []
    for fn, key in zip(fns, keys):
        out = _call_reward(fn, prompts, responses)  # (n, k)
        names.extend(_column_names(fn, key, out.shape[1], named_later=objectives is not None))
        columns.append(out)
    rewards = torch.cat(columns, dim=-1)  # (n, G)
    if objectives is not None:
        objectives = list(objectives)
        if len(objectives) != rewards.shape[1]:
            raise ValueError(
                f"`objectives` has {len(objectives)} names {objectives} but the reward functions returned "
                f"{rewards.shape[1]} columns {names}."
            )
        names = objectives
    names = check_unique_names(
        names, "objectives" if objectives is not None else "reward names",
        if_duplicate="pass `objectives=[...]` with unique names",
    )
    return rewards, names


def _call_reward(fn: Any, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """``fn(prompts, responses)`` checked and shaped: a finite float32 CPU tensor ``(n, k)``, k >= 1."""
    if not callable(fn):
        raise TypeError(f"Reward function {fn!r} is not callable; pass fn(prompts, responses) -> Tensor.")
    n, fn_name = len(prompts), _reward_fn_name(fn)
    out = fn(prompts, responses)
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"Reward function `{fn_name}` returned {type(out).__name__}, expected a tensor of shape "
                f"({n},) or ({n}, G)."
            ) from err
    if not (out.is_floating_point() or out.dtype in (torch.int32, torch.int64, torch.bool)):
        raise TypeError(f"Reward function `{fn_name}` returned dtype {out.dtype}; expected a float tensor.")
    out = out.detach().to("cpu", torch.float32)
    returned_shape = tuple(out.shape)
    if out.dim() == 1:
        out = out.unsqueeze(-1)  # (n,) -> (n, 1)
    if out.dim() != 2 or out.shape[0] != n:
        raise ValueError(
            f"Reward function `{fn_name}` returned shape {returned_shape} for {n} responses; expected "
            f"({n},) or ({n}, G)."
        )
    if out.shape[1] == 0:
        raise ValueError(f"Reward function `{fn_name}` returned zero objectives (shape {tuple(out.shape)}).")
    nan_rows = (~torch.isfinite(out)).any(-1).nonzero().flatten()
    if nan_rows.numel():
        raise ValueError(
            f"Reward function `{fn_name}` returned NaN or infinite scores for {nan_rows.numel()} of {n} "
            f"responses (first at index {int(nan_rows[0])}); check the reward model's inputs or dtype "
            "(fp16 overflow?)."
        )
    return out


def _column_names(fn: Any, key: str | None, k: int, named_later: bool = False) -> list[str]:
    """Names of the k columns `fn` returned (`key`: its name in a ``{name: fn}`` mapping, else None;
    `named_later`: the caller passed ``objectives=``, which names every column)."""
    fn_name = _reward_fn_name(fn)
    fn_objectives = getattr(fn, "objectives", None)
    if key is not None and k == 1:
        return [key]
    if fn_objectives is not None:
        fn_objectives = list(fn_objectives)
        if len(fn_objectives) != k:
            raise ValueError(
                f"Reward function `{fn_name}` names {len(fn_objectives)} objectives {fn_objectives} but "
                f"returned {k} columns; fix its `objectives` attribute."
            )
        return fn_objectives
    if key is not None and not named_later:
        example = ",".join(f"{key}_{j}" for j in range(min(k, 3))) + (",..." if k > 3 else "")
        raise ValueError(
            f"Reward {key!r} (`{fn_name}`) returned {k} columns under the single name {key!r}; give {k} names: "
            f"pass `objectives=[...]` with {k} names, or set an `objectives` attribute of length {k} on the "
            f"callable (command line: --reward {example}=MODULE:CALLABLE)."
        )
    if key is not None:
        return [f"{key}_{j}" for j in range(k)]  # placeholders: `objectives=` renames every column
    if k == 1:
        return [fn_name]
    return [f"{fn_name}_{j}" for j in range(k)]


# -------------------------------------------------------------------------------------- load_reward_functions
class _SpecReward:
    """A reward function loaded from a command-line spec, with the column names the spec gives."""

    def __init__(self, fn: Any, objectives: list[str], spec: str):
        self.fn = fn
        self.objectives = objectives
        self.spec = spec
        self.__name__ = objectives[0] if len(objectives) == 1 else _reward_fn_name(fn)

    def __call__(self, prompts: list[str], responses: list[str]) -> Any:
        out = self.fn(prompts, responses)
        shape = tuple(out.shape) if hasattr(out, "shape") else None  # other outputs are checked by score_rewards
        k = None if shape is None else (shape[1] if len(shape) == 2 else 1)
        if k is not None and k != len(self.objectives):
            names = ",".join(self.objectives)
            raise ValueError(
                f"--reward {self.spec!r} returned {k} columns (shape {shape}) but names {len(self.objectives)} "
                f"objective(s) {self.objectives}; give {k} names, e.g. --reward "
                f"{','.join(f'{self.objectives[0]}_{j}' for j in range(min(k, 3)))}=... (now {names}=...)."
            )
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, objectives={self.objectives})"


_SPEC_FORMS = (
    "NAME=MODULE:CALLABLE, NAME1,NAME2=MODULE:CALLABLE (a callable returning several columns) or MODULE:CALLABLE; "
    "MODULE is an importable module, a module in the current folder, or a file path (./my_rewards.py)"
)


def load_reward_functions(specs: Sequence[str]) -> list[RewardFunction]:
    """Reward functions from command-line specs (``--reward``), each carrying ``.objectives`` (its column names).

    Forms:

    * ``NAME=MODULE:ATTR`` — one objective named NAME;
    * ``NAME1,NAME2,NAME3=MODULE:ATTR`` — a callable returning ``(n, 3)``, one name per column;
    * ``MODULE:ATTR`` — names from the callable's ``objectives`` attribute, else its ``__name__``.

    ``MODULE`` is a dotted module name (importable, or a module in the current working directory: the current
    folder is searched even when the console script did not put it on ``sys.path``) or a path to a ``.py`` file
    (``./my_rewards.py``, ``/abs/path/rewards.py``). ``ATTR`` may be dotted (``Class.method``). A class is
    instantiated with no arguments. A callable that names its own objectives must agree with the spec's names
    in number (one name for a multi-column callable is an error, not a silent rename).

    Raises:
        ValueError: naming the spec and the fix — malformed spec, module or file not found, missing attribute,
            not callable, a class that cannot be built with no arguments, bad or duplicate names.
    """
    if isinstance(specs, str):
        specs = [specs]
    loaded = [_load_spec(spec) for spec in specs]
    all_names = [name for fn in loaded for name in fn.objectives]
    duplicates = sorted({name for name in all_names if all_names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"--reward specs {list(specs)} give the objective name(s) {duplicates} more than once; each objective "
            "needs its own name (NAME=MODULE:CALLABLE)."
        )
    return loaded


def _load_spec(spec: str) -> _SpecReward:
    if not isinstance(spec, str):
        raise TypeError(f"a --reward spec must be a string ({_SPEC_FORMS}), got {type(spec).__name__}.")
    names_part, has_names, target = spec.partition("=")
    if not has_names:
        names_part, target = "", spec
    module_name, _, attr = target.rpartition(":")  # rpartition: a Windows path 'C:\\x.py:fn' has two colons
    if not module_name.strip() or not attr.strip():
        raise ValueError(f"--reward {spec!r}: expected {_SPEC_FORMS}; e.g. --reward helpful=my_rewards:helpfulness.")
    module_name, attr = module_name.strip(), attr.strip()
    names = None
    if has_names:
        try:
            names = check_unique_names(
                [n.strip() for n in names_part.split(",")], f"--reward {spec!r}", kind="names",
                if_empty="give a name before '='",
            )
        except ValueError as err:
            raise ValueError(f"{err} Names are comma-separated, e.g. --reward a,b=my_rewards:fn.") from None
    obj = _instantiate(_resolve_target(spec, module_name, attr), spec, attr)
    return _SpecReward(obj, _spec_objectives(obj, names, spec, attr), spec)


def _spec_objectives(obj: Any, names: list[str] | None, spec: str, attr: str) -> list[str]:
    own = getattr(obj, "objectives", None)
    own = list(own) if own is not None and not isinstance(own, str) else None
    if names is None:
        return own if own else [_reward_fn_name(obj) if hasattr(obj, "__name__") else attr.rsplit(".", 1)[-1]]
    if own is not None and len(own) > 1 and len(own) != len(names):
        raise ValueError(
            f"--reward {spec!r} gives {len(names)} name(s) {names} but {attr!r} names {len(own)} objectives {own}; "
            f"give {len(own)} names ({','.join(own)}=...) or none (MODULE:CALLABLE uses {own})."
        )
    return names


def _resolve_target(spec: str, module_name: str, attr: str) -> Any:
    if _is_file_target(module_name):
        module = _import_file(spec, module_name)
        try:
            return pkgutil.resolve_name(f"{module.__name__}:{attr}")
        except AttributeError as err:
            raise ValueError(f"--reward {spec!r}: {module_name!r} has no attribute {attr!r} ({err}).") from None
    with _cwd_on_path():
        try:
            return pkgutil.resolve_name(f"{module_name}:{attr}")
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                raise ValueError(
                    f"--reward {spec!r}: no module named {module_name!r} on sys.path or in the current folder "
                    f"{os.getcwd()!r}; run from the folder that holds it, or give its file path "
                    f"(e.g. --reward NAME=./{module_name.replace('.', '/')}.py:{attr})."
                ) from None
            raise ValueError(f"--reward {spec!r}: importing {module_name!r} failed: {err}.") from err
        except AttributeError as err:
            raise ValueError(f"--reward {spec!r}: module {module_name!r} has no attribute {attr!r} ({err}).") from None
        except ValueError as err:  # pkgutil: malformed dotted name
            raise ValueError(f"--reward {spec!r}: {err}; expected {_SPEC_FORMS}.") from None


def _is_file_target(module_name: str) -> bool:
    return module_name.endswith(".py") or "/" in module_name or os.sep in module_name or module_name.startswith("~")


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Put the current working directory on ``sys.path`` for the duration (console scripts leave it off)."""
    cwd = os.getcwd()
    present = any(os.path.abspath(p or os.curdir) == cwd for p in sys.path)
    if not present:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if not present and cwd in sys.path:
            sys.path.remove(cwd)


def _import_file(spec: str, path: str):
    """Import a ``.py`` file as a module (its folder is on ``sys.path`` while it runs, for sibling imports)."""
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise ValueError(
            f"--reward {spec!r}: no such file: {path!r} (resolved to {full!r}; relative paths start at the "
            f"current folder {os.getcwd()!r}). Fix the path, or name an importable module instead."
        )
    stem = os.path.splitext(os.path.basename(full))[0]
    name = f"_hf_rmod_rewards_{stem}_{hashlib.sha1(full.encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    file_spec = importlib.util.spec_from_file_location(name, full)
    if file_spec is None or file_spec.loader is None:
        raise ValueError(f"--reward {spec!r}: cannot import {path!r} as Python; give a .py file.")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[name] = module  # dataclasses / pickling look the module up by name
    folder = os.path.dirname(full)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        file_spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise ValueError(f"--reward {spec!r}: running {path!r} failed: {type(err).__name__}: {err}") from err
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module


def _instantiate(obj: Any, spec: str, attr: str) -> Any:
    if isinstance(obj, type):
        try:
            obj = obj()
        except TypeError as err:
            raise ValueError(
                f"--reward {spec!r}: class {attr!r} cannot be built with no arguments ({err}); give its arguments "
                "defaults, or point the spec at a function or an instance instead."
            ) from err
    if not callable(obj):
        raise ValueError(
            f"--reward {spec!r}: {attr!r} is a {type(obj).__name__}, not callable; point it at a function "
            "fn(prompts, responses) -> Tensor, a class, or an instance with __call__."
        )
    return obj
