"""The decoding methods an evaluation compares: :class:`EvalMethod` and the paper's grid :func:`default_methods`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from .._utils import check_unique_names
from ..config import RMODConfig
from .configs import _check_grid

__all__ = ["EvalMethod", "default_methods"]

#: Keys an :class:`EvalMethod` may override in :class:`~hf_rmod.RMODConfig` (the value model comes from evaluate()).
RMOD_KEYS = ("num_candidates", "block_size", "lam", "weights", "selection", "objectives", "solver", "solver_options")


def format_number(x: float) -> str:
    """0.5 -> '0.5', 1.0 -> '1', 10.0 -> '10' (for method names and plot ticks)."""
    return f"{float(x):g}"


def jsonable(value: Any) -> Any:
    """JSON round trip (tuples -> lists); objects JSON cannot hold (e.g. a logits processor) become their repr."""
    return json.loads(json.dumps(value, default=repr)) if value is not None else None


@dataclass(frozen=True)
class EvalMethod:
    """One decoding method of an evaluation.

    Args:
        name: unique, readable name (used in the results file, summary and plots).
        rmod: ``None`` for plain sampling from the reference policy, else keyword overrides of
            :class:`~hf_rmod.RMODConfig` (``num_candidates``, ``block_size``, ``lam``, ``weights``, ``selection``,
            ``objectives``, ``solver``, ``solver_options``; the value model is given to :func:`evaluate`).
            ``block_size=None`` means "the whole response" (``max_new_tokens`` of the evaluation): one block,
            i.e. Best-of-K.

    Use the constructors: :meth:`reference`, :meth:`best_of_k`, :meth:`single_objective`, :meth:`uniform`,
    :meth:`rmod`. The overrides are validated by ``RMODConfig`` at construction.

    Example:
        >>> EvalMethod.rmod(k=8, b=16, lam=0.5).name
        'rmod_k8_b16_lam0.5'
    """

    name: str
    rmod: dict | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or self.name != self.name.strip():
            raise ValueError(f"`name` must be a non-empty string without surrounding spaces, got {self.name!r}.")
        if self.rmod is None:
            return
        if not isinstance(self.rmod, Mapping):
            raise TypeError(
                f"EvalMethod {self.name!r}: `rmod` must be a dict of RMODConfig overrides or None (plain sampling), "
                f"got {type(self.rmod).__name__}."
            )
        unknown = sorted(set(self.rmod) - set(RMOD_KEYS))
        if unknown:
            hint = " (the value model is passed to evaluate())" if "value_model" in unknown else ""
            raise ValueError(
                f"EvalMethod {self.name!r}: unknown `rmod` keys {unknown}{hint}; allowed: {list(RMOD_KEYS)}."
            )
        overrides = dict(self.rmod)
        if isinstance(overrides.get("weights"), list):
            overrides["weights"] = tuple(overrides["weights"])
        object.__setattr__(self, "rmod", overrides)
        check = dict(overrides)
        if check.get("block_size", 1) is None:
            check["block_size"] = 1  # "whole response", resolved by evaluate()
        try:  # a path string stands in for the value model: RMODConfig only loads it when decoding
            RMODConfig(value_model="<set by evaluate>", **check)
        except (TypeError, ValueError) as err:
            raise type(err)(f"EvalMethod {self.name!r}: {err}") from None

    def __hash__(self) -> int:  # frozen, but `rmod` is a dict: hash its JSON form
        return hash((self.name, json.dumps(self.rmod, sort_keys=True)))

    # -- constructors ------------------------------------------------------------------------------------------
    @classmethod
    def reference(cls, name: str = "reference") -> "EvalMethod":
        """Plain sampling from the reference policy (``model.generate`` without RMOD)."""
        return cls(name, None)

    @classmethod
    def best_of_k(cls, k: int, lam: float = 0.5, name: str | None = None) -> "EvalMethod":
        """Robust Best-of-K (paper §5.2, App. C.3): RMOD with one block spanning the whole response.

        K complete responses are sampled, the worst-case weights ``w*`` are solved on their values and the
        response with the largest ``w*·V`` is kept.
        """
        return cls(name or f"best_of_k{k}", {"num_candidates": k, "block_size": None, "lam": lam, "weights": "robust"})

    @classmethod
    def single_objective(cls, objective: str, k: int, b: int, name: str | None = None) -> "EvalMethod":
        """Controlled decoding for one objective (the paper's ``CD-<objective>``): weight 1 on `objective`."""
        if not isinstance(objective, str) or not objective:
            raise ValueError(f"`objective` must be an objective name of the value head, got {objective!r}.")
        return cls(name or f"cd_{objective}_k{k}_b{b}", {"num_candidates": k, "block_size": b, "weights": objective})

    @classmethod
    def uniform(cls, k: int, b: int, name: str | None = None) -> "EvalMethod":
        """Controlled decoding with uniform weights ``1/G`` (the paper's UNIFORM baseline)."""
        return cls(name or f"uniform_k{k}_b{b}", {"num_candidates": k, "block_size": b, "weights": "uniform"})

    # `EvalMethod.rmod(k, b, lam)` is attached after the class: a classmethod named like the `rmod` field,
    # defined in the class body, would become the field's default (EvalMethod("x").rmod would be a method).

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"reference"``, ``"best_of_k"``, ``"rmod"``, ``"uniform"`` or ``"fixed_weights"`` (incl. CD-<objective>)."""
        return method_kind(self.rmod)

    def resolved_rmod(self, max_new_tokens: int) -> dict | None:
        """The overrides with ``block_size=None`` replaced by ``max_new_tokens`` (None for plain sampling)."""
        if self.rmod is None:
            return None
        out = dict(self.rmod)
        if out.get("block_size", 16) is None:
            out["block_size"] = max_new_tokens
        return out

    def to_dict(self) -> dict:
        """JSON-serialisable ``{"name", "kind", "rmod"}``."""
        return {"name": self.name, "kind": self.kind, "rmod": jsonable(self.rmod)}


def _rmod_method(cls, k: int, b: int, lam: float = 0.5, name: str | None = None) -> EvalMethod:
    """Robust multi-objective decoding with worst-case weights (Algorithm 1), trade-off ``lam``."""
    return cls(
        name or f"rmod_k{k}_b{b}_lam{format_number(lam)}",
        {"num_candidates": k, "block_size": b, "lam": lam, "weights": "robust"},
    )


_rmod_method.__name__ = _rmod_method.__qualname__ = "rmod"
EvalMethod.rmod = classmethod(_rmod_method)  # instances keep their `rmod` field; the class gets the constructor


def method_kind(rmod: Mapping | None) -> str:
    """The kind of a method from its ``rmod`` overrides (as stored in the result rows); see :attr:`EvalMethod.kind`."""
    if rmod is None:
        return "reference"
    weights = rmod.get("weights", "robust")
    if weights == "robust":
        return "best_of_k" if "block_size" in rmod and rmod["block_size"] is None else "rmod"
    return "uniform" if weights == "uniform" else "fixed_weights"


def _grid(name: str, values: Any, cast: type, minimum: float, strict: bool) -> list:
    """One axis of the method grid, checked by the settings' grid rule (:mod:`.configs`), without duplicates."""
    holder = SimpleNamespace(**{name: values})
    _check_grid(holder, name, cast, minimum, strict)
    values = getattr(holder, name)
    if len(set(values)) != len(values):
        raise ValueError(f"`{name}` has duplicates: {values}; give each value once.")
    return values


def default_methods(
    objectives: Sequence[str],
    ks: Sequence[int] = (8,),
    bs: Sequence[int] = (16,),
    lams: Sequence[float] = (0.5,),
) -> list[EvalMethod]:
    """The paper's comparison on a K × B × λ grid.

    In order: ``reference``; robust Best-of-K ``best_of_k{K}`` for each K (with λ = ``lams[0]``); for each K
    and B, ``cd_{objective}_k{K}_b{B}`` for every objective and ``uniform_k{K}_b{B}``; then
    ``rmod_k{K}_b{B}_lam{λ}`` for each K, B and λ.

    Args:
        objectives: the ``G`` objective names of the value head (one ``CD-<objective>`` method each).
        ks: numbers of candidates K (ints >= 1).
        bs: block sizes B (ints >= 1).
        lams: RMOD trade-offs λ > 0.

    Returns:
        A list of :class:`EvalMethod` with unique names.
    """
    objectives = check_unique_names(objectives, "objectives")
    ks, bs = _grid("ks", ks, int, 1, strict=False), _grid("bs", bs, int, 1, strict=False)
    lams = _grid("lams", lams, float, 0, strict=True)
    methods = [EvalMethod.reference()]
    methods += [EvalMethod.best_of_k(k, lam=lams[0]) for k in ks]
    for k in ks:
        for b in bs:
            methods += [EvalMethod.single_objective(g, k, b) for g in objectives]
            methods.append(EvalMethod.uniform(k, b))
    methods += [EvalMethod.rmod(k, b, lam) for k in ks for b in bs for lam in lams]
    return methods
