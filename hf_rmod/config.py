"""`RMODConfig`: every setting of Robust Multi-Objective Decoding in one validated object."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

from ._hub import check_local_path
from ._utils import check_unique_names
from .solver._problem import _LAM_HINT, METHODS, _positive_number
from .value_model import ValueModel


_WEIGHT_MODES = ("robust", "uniform")
_SELECTIONS = ("argmax", "sample")
_SOLVER_OPTION_NAMES = ("max_iter", "tol", "step_size", "check")

WeightsSpec = Union[str, int, Sequence[float]]


@dataclass
class RMODConfig:
    """Configuration of Robust Multi-Objective Decoding (RMOD, Algorithm 1 of the paper).

    Pass it to ``hf_rmod.generate(model, input_ids, rmod_config=cfg, ...)``, or to
    ``model.generate(..., rmod_config=cfg)`` after ``hf_rmod.enable(model)``. Decoding never changes it. Every
    other ``generate`` argument (``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``,
    ``top_p``, ``repetition_penalty``, ``eos_token_id``, …) keeps its meaning and applies to the
    sampling of the K candidate blocks.

    Parameters:
        value_model (`ValueModel` or `str`):
            The multi-objective value model ``V`` with G outputs: any object of the value-model protocol
            (`hf_rmod.value_model.ValueModel`: a `MultiValueHead`, or a `hf_rmod.RewardValueModel` that scores
            the decoded partial response with reward functions or the MiniLM text value model), or a local
            directory / Hub id that is loaded with `hf_rmod.defaults.load_value_model` the first time it is
            needed (see `value_model_kwargs`) and reused by later calls; the config itself is never changed by
            decoding. A string that looks like a local path (starts with ``.``, ``/`` or ``~``, has more than
            one ``/``, or ``first/rest`` where ``./first`` exists) must exist: otherwise `FileNotFoundError` is
            raised here, without asking the Hub.
        num_candidates (`int`, defaults to 16):
            K, the number of candidate blocks sampled from the reference policy per block. With K > 1,
            ``generate`` must sample (``do_sample=True``): greedy candidates would all be the same block.
        block_size (`int`, defaults to 16):
            B, the number of tokens per block. ``max_new_tokens`` need not be a multiple of B: the
            last block is shorter.
        lam (`float`, defaults to 0.5):
            λ > 0, the trade-off between value and KL to the reference policy (eq. 4). Small λ puts
            the worst-case weights on the objective with the lowest expected value (as λ -> 0, a vertex
            of the simplex); larger λ hedges across the objectives whose candidates' values vary
            together (App. B; measured in docs/results.md, λ ablation).
        weights (`str`, `int` or sequence of `float`, defaults to ``"robust"``):
            How the objective weights of each block are chosen:
            ``"robust"`` solves eq. 7 for the worst-case weights ``w*`` every block (RMOD);
            ``"uniform"`` uses ``1/G`` (the paper's UNIFORM baseline);
            a sequence of G non-negative floats uses those fixed weights (normalised to sum 1);
            an objective name or index does single-objective controlled decoding.
            Only ``"robust"`` calls the solver.
        selection (`str`, defaults to ``"argmax"``):
            ``"argmax"`` keeps the candidate with the largest ``w·V`` (Algorithm 1, line 7);
            ``"sample"`` draws the block from the K candidates with probability ∝ ``exp(λ·w·V)``,
            the self-normalised best-response policy of Proposition 4.1.
        objectives (sequence of `str`, *optional*):
            Use only these outputs of the value model (by name), in this order. Default: all.
        solver (`str`, defaults to ``"exact"``):
            Method of `hf_rmod.solve_weights`: ``"exact"``, ``"paper"`` (eq. 10), ``"hedge"``
            (eq. 46) or ``"projected"`` (eq. 48).
        solver_options (`dict`, *optional*):
            Extra keyword arguments of `hf_rmod.solve_weights`: ``max_iter``, ``tol``,
            ``step_size``, ``check`` (``False``: no host sync per solve on accelerators; rows the fast path
            cannot certify keep ``converged=False`` instead of falling back to the iterative solver).
        value_model_kwargs (`dict`, *optional*):
            Keyword arguments for ``MultiValueHead.from_pretrained`` (through `load_value_model`) when
            `value_model` is a path or Hub id (e.g. ``{"revision": "main"}``). ``trust_remote_code`` is never
            set for you.
        value_tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Only for a value model with its own backbone that does **not** share the policy's
            tokenizer: every block, each candidate's text (prompt + response so far) is decoded with
            `tokenizer` and re-encoded with `value_tokenizer` for a full forward of the value model.
            Correct but slower than the default path, where the value model reads the policy's
            token ids and keeps its own KV cache. Requires `tokenizer`.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            The policy's tokenizer; needed only together with `value_tokenizer`.
        value_max_length (`int`, *optional*):
            With `value_tokenizer`: keep at most this many value-model tokens (the most recent
            ones; default: the value tokenizer's ``model_max_length`` when it is finite).

    Example:

    ```python
    >>> from hf_rmod import RMODConfig
    >>> cfg = RMODConfig(value_model="path/to/value-head", num_candidates=8, block_size=16, lam=0.5)
    >>> cfg.num_candidates
    8
    ```
    """

    value_model: Union[ValueModel, str, os.PathLike, None] = None
    num_candidates: int = 16
    block_size: int = 16
    lam: float = 0.5
    weights: WeightsSpec = "robust"
    selection: str = "argmax"
    objectives: Sequence[str] | None = None
    solver: str = "exact"
    solver_options: dict[str, Any] = field(default_factory=dict)
    value_model_kwargs: dict[str, Any] = field(default_factory=dict)
    value_tokenizer: Any = None
    tokenizer: Any = None
    value_max_length: int | None = None

    def __post_init__(self) -> None:
        if self.value_model is None:
            raise ValueError(
                "`value_model` is required: pass a `MultiValueHead` (e.g. "
                "`MultiValueHead.for_policy(model, objectives=[...])` or `MultiValueHead.from_pretrained(path)`) "
                "or a local path / Hub id of a saved value head."
            )
        if isinstance(self.value_model, os.PathLike):
            self.value_model = os.fspath(self.value_model)
        if isinstance(self.value_model, str):  # a missing local folder fails here, before any Hub request
            options = self.value_model_kwargs if isinstance(self.value_model_kwargs, dict) else {}
            check_local_path(self.value_model, "value_model", options.get("subfolder") or "")
        if not isinstance(self.value_model, str) and not _is_value_head(self.value_model):
            raise TypeError(
                f"`value_model` must be a `MultiValueHead`, a `RewardValueModel` or a path / Hub id string, got "
                f"{type(self.value_model).__name__}. Load one with `MultiValueHead.from_pretrained(...)`, or score "
                "with reward functions: `hf_rmod.reward_values.RewardValueModel(reward_fns, tokenizer=...)`."
            )
        self.num_candidates = _positive_int("num_candidates", self.num_candidates, "e.g. num_candidates=16")
        self.block_size = _positive_int("block_size", self.block_size, "e.g. block_size=16")
        self.lam = _positive_number("lam", self.lam, _LAM_HINT)
        self.weights = _check_weights(self.weights)
        if self.selection not in _SELECTIONS:
            raise ValueError(f"`selection` must be one of {_SELECTIONS}, got {self.selection!r}.")
        if self.objectives is not None:
            self.objectives = tuple(
                check_unique_names(
                    self.objectives, "objectives", if_empty="leave it as None to use every output of the value model"
                )
            )
        if self.solver not in METHODS:
            raise ValueError(f"`solver` must be one of {METHODS}, got {self.solver!r}.")
        unknown = set(self.solver_options) - set(_SOLVER_OPTION_NAMES)
        if unknown:
            raise ValueError(
                f"`solver_options` has unknown keys {sorted(unknown)}; allowed: {list(_SOLVER_OPTION_NAMES)}."
            )
        if not isinstance(self.value_model_kwargs, dict):
            raise TypeError(f"`value_model_kwargs` must be a dict, got {type(self.value_model_kwargs).__name__}.")
        for name in ("value_tokenizer", "tokenizer"):
            tok = getattr(self, name)
            if tok is not None and not (callable(tok) and hasattr(tok, "batch_decode")):
                raise TypeError(f"`{name}` must be a transformers tokenizer, got {type(tok).__name__}.")
        if self.value_tokenizer is not None and self.tokenizer is None:
            raise ValueError(
                "`value_tokenizer` re-tokenises candidate text, which needs the policy's tokenizer too: pass "
                "`tokenizer=<the policy's tokenizer>`."
            )
        if self.value_max_length is not None:
            self.value_max_length = _positive_int("value_max_length", self.value_max_length, "e.g. value_max_length=1024")

    # ------------------------------------------------------------------ helpers used by the decoder
    @property
    def calls_solver(self) -> bool:
        """Whether the decoder solves for worst-case weights (only in ``weights="robust"``)."""
        return self.weights == "robust"

    def resolve_objectives(self, available: Sequence[str]) -> list[int]:
        """Indices of the value model outputs used for decoding, checked against `available`."""
        available = list(available)
        if self.objectives is None:
            return list(range(len(available)))
        missing = [o for o in self.objectives if o not in available]
        if missing:
            raise ValueError(
                f"`objectives` names {missing} that the value model does not have; it has {available}."
            )
        return [available.index(o) for o in self.objectives]

    def resolve_fixed_weights(self, objective_names: Sequence[str]) -> list[float] | None:
        """The fixed weight vector of the non-robust modes (None in ``"robust"`` mode).

        Checked against the G objectives actually used (after `objectives` selection).
        """
        names = list(objective_names)
        g = len(names)
        spec = self.weights
        if spec == "robust":
            return None
        if spec == "uniform":
            return [1.0 / g] * g
        if isinstance(spec, str):
            if spec not in names:
                raise ValueError(
                    f"`weights`={spec!r} is neither 'robust', 'uniform' nor one of the objectives {names}."
                )
            return [1.0 if n == spec else 0.0 for n in names]
        if isinstance(spec, int):
            if not -g <= spec < g:
                raise ValueError(f"`weights`={spec} is not a valid objective index for G={g} objectives {names}.")
            return [1.0 if i == spec % g else 0.0 for i in range(g)]
        if len(spec) != g:
            raise ValueError(
                f"`weights` has {len(spec)} entries but decoding uses G={g} objectives {names}; "
                f"give one non-negative weight per objective."
            )
        total = float(sum(spec))
        return [float(w) / total for w in spec]


def _is_value_head(obj: Any) -> bool:
    """A value model object: the protocol both families implement (`MultiValueHead`, `RewardValueModel`)."""
    return isinstance(obj, ValueModel)


def _positive_int(name: str, value: Any, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= 1, got {value!r} ({type(value).__name__}); {hint}.")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}; {hint}.")
    return value


def _check_weights(spec: Any) -> WeightsSpec:
    if isinstance(spec, str):
        return spec  # mode name or objective name; objective names are checked against the value model
    if isinstance(spec, bool):
        raise TypeError(f"`weights` must be 'robust', 'uniform', an objective name/index or G floats, got {spec!r}.")
    if isinstance(spec, int):
        return spec
    try:
        values = [float(w) for w in spec]
    except (TypeError, ValueError):
        raise TypeError(
            f"`weights` must be 'robust', 'uniform', an objective name/index or a sequence of floats, got {spec!r}."
        ) from None
    if len(values) == 0:
        raise ValueError("`weights` is an empty sequence; give one non-negative weight per objective.")
    bad = [w for w in values if not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(f"`weights` must be finite and non-negative, got {values}; e.g. weights=[0.5, 0.5].")
    if sum(values) <= 0:
        raise ValueError(f"`weights` sums to 0 ({values}); at least one weight must be positive.")
    return tuple(values)
