"""The decoding methods an evaluation compares: :class:`EvalMethod`, the paper's RMOD grid :func:`default_methods`
and its policy baselines :func:`baseline_methods` (Rewarded Soups, MOD, DISTILL-RMOD)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from .._utils import check_unique_names
from ..config import RMODConfig
from .configs import _check_grid

__all__ = ["DISTILLED_POLICY", "PAPER_WEIGHTINGS", "EvalMethod", "baseline_methods", "default_methods",
           "paper_weightings"]

#: Keys an :class:`EvalMethod` may override in :class:`~hf_rmod.RMODConfig` (the value model comes from evaluate()).
RMOD_KEYS = ("num_candidates", "block_size", "lam", "weights", "selection", "objectives", "solver", "solver_options")
#: Kinds of the methods that sample from other policies than the reference (``EvalMethod.policy["kind"]``).
POLICY_KINDS = ("rewarded_soup", "mod", "policy")
#: The paper's weightings of the first objective for Rewarded Soups and MOD (§6, App. C); the rest goes to the
#: second objective (see :func:`paper_weightings` for G != 2).
PAPER_WEIGHTINGS = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
#: The key of ``evaluate(policies={...})`` that :meth:`EvalMethod.distill_rmod` samples from.
DISTILLED_POLICY = "distill_rmod"
_SUM_TOLERANCE = 1e-6


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
        rmod: ``None`` for plain sampling, else keyword overrides of :class:`~hf_rmod.RMODConfig`
            (``num_candidates``, ``block_size``, ``lam``, ``weights``, ``selection``, ``objectives``, ``solver``,
            ``solver_options``; the value model is given to :func:`evaluate`). ``block_size=None`` means "the whole
            response" (``max_new_tokens`` of the evaluation): one block, i.e. Best-of-K.
        policy: ``None`` to decode with the reference policy (the ``model`` of :func:`evaluate`), else the other
            policy that samples (plainly; ``rmod`` must then be ``None``):
            ``{"kind": "rewarded_soup", "weights": {objective: w}}`` (the soup of evaluate's
            ``objective_policies``, weights on the simplex), ``{"kind": "mod", "weights": {objective: w}}`` (MOD
            over those policies, weights with a positive sum) or ``{"kind": "policy", "key": str}`` (evaluate's
            ``policies[key]``).

    Use the constructors: :meth:`reference`, :meth:`best_of_k`, :meth:`single_objective`, :meth:`uniform`,
    :meth:`rmod`, :meth:`rewarded_soup`, :meth:`mod`, :meth:`policy`, :meth:`distill_rmod`. The RMOD overrides are
    validated by ``RMODConfig`` at construction, the policy weights by the rules above.

    Example:
        >>> EvalMethod.rmod(k=8, b=16, lam=0.5).name
        'rmod_k8_b16_lam0.5'
        >>> EvalMethod.rewarded_soup({"harmless": 0.8, "helpful": 0.2}).name
        'rs_w0.8'
    """

    name: str
    rmod: dict | None = None
    policy: dict | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or self.name != self.name.strip():
            raise ValueError(f"`name` must be a non-empty string without surrounding spaces, got {self.name!r}.")
        if self.policy is not None:
            if self.rmod is not None:
                raise ValueError(
                    f"EvalMethod {self.name!r}: `rmod` and `policy` exclude each other (a policy method samples "
                    "plainly from its policy); pass rmod=None."
                )
            object.__setattr__(self, "policy", _check_policy(self.name, self.policy))
            return
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

    def __hash__(self) -> int:  # frozen, but `rmod` / `policy` are dicts: hash their JSON form
        return hash((self.name, json.dumps(self.rmod, sort_keys=True), json.dumps(self.policy, sort_keys=True)))

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

    @classmethod
    def rewarded_soup(cls, weights: Mapping[str, float], name: str | None = None) -> "EvalMethod":
        """Rewarded Soups: plain sampling from ``rewarded_soup(per-objective policies, weights)``.

        Args:
            weights: ``{objective: weight}``, non-negative, summing to 1; every objective names a policy of
                evaluate's ``objective_policies`` (the soup is built once per method, from the policies with a
                non-zero weight, in this order).
            name: default ``rs_w{weight of the first objective}`` for two objectives (``rs_w0.8``), else
                ``rs_w{w1}_{w2}_...``.
        """
        return cls(name or f"rs_{_weights_label(weights)}", policy={"kind": "rewarded_soup", "weights": weights})

    @classmethod
    def mod(cls, weights: Mapping[str, float], name: str | None = None) -> "EvalMethod":
        """MOD: sampling from ``softmax(Σ_g w_g · logits_g)`` of the per-objective policies (``mod_generate``).

        Args:
            weights: ``{objective: weight}`` with a positive sum; every objective names a policy of evaluate's
                ``objective_policies`` (zero-weight policies are not run).
            name: default ``mod_w{weight of the first objective}`` for two objectives (``mod_w0.8``).
        """
        return cls(name or f"mod_{_weights_label(weights)}", policy={"kind": "mod", "weights": weights})

    @classmethod
    def distill_rmod(cls, name: str = DISTILLED_POLICY) -> "EvalMethod":
        """DISTILL-RMOD: plain sampling from evaluate's ``policies["distill_rmod"]`` (the policy fine-tuned on
        RMOD's responses, :func:`~hf_rmod.experiments.distill.distill_rmod`)."""
        return cls.policy(DISTILLED_POLICY, name=name)

    # `EvalMethod.rmod(k, b, lam)` and `EvalMethod.policy(key)` are attached after the class: a classmethod named
    # like a field, defined in the class body, would become the field's default (EvalMethod("x").rmod would be a
    # method).

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"reference"``, ``"best_of_k"``, ``"rmod"``, ``"uniform"``, ``"fixed_weights"`` (incl.
        CD-<objective>), ``"rewarded_soup"``, ``"mod"`` or ``"policy"``."""
        return method_kind(self.rmod, self.policy)

    def resolved_rmod(self, max_new_tokens: int) -> dict | None:
        """The overrides with ``block_size=None`` replaced by ``max_new_tokens`` (None for plain sampling)."""
        if self.rmod is None:
            return None
        out = dict(self.rmod)
        if out.get("block_size", 16) is None:
            out["block_size"] = max_new_tokens
        return out

    def to_dict(self) -> dict:
        """JSON-serialisable ``{"name", "kind", "rmod", "policy"}``."""
        return {"name": self.name, "kind": self.kind, "rmod": jsonable(self.rmod), "policy": jsonable(self.policy)}


def _rmod_method(cls, k: int, b: int, lam: float = 0.5, name: str | None = None) -> EvalMethod:
    """Robust multi-objective decoding with worst-case weights (Algorithm 1), trade-off ``lam``."""
    return cls(
        name or f"rmod_k{k}_b{b}_lam{format_number(lam)}",
        {"num_candidates": k, "block_size": b, "lam": lam, "weights": "robust"},
    )


def _policy_method(cls, key: str, name: str | None = None) -> EvalMethod:
    """Plain sampling from another policy: evaluate's ``policies[key]`` (e.g. a policy fine-tuned elsewhere).

    Args:
        key: the key of the policy in ``evaluate(..., policies={key: model})``.
        name: the method name (default: ``key``).
    """
    return cls(name or key, policy={"kind": "policy", "key": key})


_rmod_method.__name__ = _rmod_method.__qualname__ = "rmod"
_policy_method.__name__ = _policy_method.__qualname__ = "policy"
EvalMethod.rmod = classmethod(_rmod_method)  # instances keep their `rmod` field; the class gets the constructor
EvalMethod.policy = classmethod(_policy_method)  # likewise for the `policy` field


def method_kind(rmod: Mapping | None, policy: Mapping | None = None) -> str:
    """The kind of a method from its ``rmod`` overrides and ``policy`` (as stored in the result rows); see
    :attr:`EvalMethod.kind`."""
    if policy is not None:
        return str(policy.get("kind"))
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


# ------------------------------------------------------------------------------------------------------------
# methods that sample from other policies: Rewarded Soups, MOD, DISTILL-RMOD
# ------------------------------------------------------------------------------------------------------------
def paper_weightings(objectives: Sequence[str], first: Sequence[float] = PAPER_WEIGHTINGS) -> list[dict[str, float]]:
    """The objective weightings of the RS / MOD baselines: ``{objective: weight}`` per weight of the first objective.

    Two objectives (the paper): ``w`` on the first, ``1 - w`` on the second, for ``w`` in ``first``
    (1.0, 0.8, ..., 0.0). G objectives: ``w`` on the first and ``(1 - w) / (G - 1)`` on each other one (so the
    weight of the first objective still names the weighting); one objective: only ``{objective: 1.0}``.
    Weights are rounded to 12 decimals (0.2, not 0.19999999999999996).

    Args:
        objectives: the objective names, in the order of the value head (the first one gets ``w``).
        first: weights of the first objective, in [0, 1], without duplicates.
    """
    objectives = check_unique_names(objectives, "objectives")
    first = _grid("first", first, float, 0, strict=False)
    if any(w > 1 for w in first):
        raise ValueError(f"`first` weights must be in [0, 1], got {first}; e.g. first=(1.0, 0.8, 0.6, 0.4, 0.2, 0.0).")
    if len(objectives) == 1:
        return [{objectives[0]: 1.0}]
    rest = len(objectives) - 1
    return [{objectives[0]: w, **{g: round((1.0 - w) / rest, 12) for g in objectives[1:]}} for w in first]


def baseline_methods(
    objectives: Sequence[str],
    first: Sequence[float] = PAPER_WEIGHTINGS,
    *,
    soups: bool = True,
    mod: bool = True,
    distill: bool = True,
) -> list[EvalMethod]:
    """The paper's policy baselines: ``rs_w{w}`` (Rewarded Soups) then ``mod_w{w}`` (MOD) per weighting of
    :func:`paper_weightings`, then ``distill_rmod`` (DISTILL-RMOD).

    RS and MOD sample from evaluate's ``objective_policies`` (one policy per objective); ``distill_rmod`` from
    ``policies["distill_rmod"]``.

    Args:
        objectives: the objective names (value-head order; the first gets ``w``).
        first: weights of the first objective (default: the paper's 1.0, 0.8, ..., 0.0).
        soups / mod / distill: include the RS methods / the MOD methods / DISTILL-RMOD.
    """
    weightings = paper_weightings(objectives, first)
    methods = [EvalMethod.rewarded_soup(w) for w in weightings] if soups else []
    methods += [EvalMethod.mod(w) for w in weightings] if mod else []
    return methods + ([EvalMethod.distill_rmod()] if distill else [])


def _weight_label(value: float) -> str:
    """0.8 -> '0.8', 1.0 -> '1.0', 0.25 -> '0.25' (method names keep one decimal at least: ``rs_w1.0``)."""
    text = format_number(value)
    return text if any(c in text for c in ".en") else text + ".0"


def _weights_label(weights: Any) -> str:
    """``w0.8`` for two objectives (the first one's weight), ``w0.6_0.2_0.2`` otherwise."""
    if not isinstance(weights, Mapping) or not weights:
        return "w"  # the method's validation names the problem
    values = list(weights.values())
    try:
        shown = values[:1] if len(values) == 2 else values
        return "w" + "_".join(_weight_label(float(v)) for v in shown)
    except (TypeError, ValueError):
        return "w"


def _check_policy(name: str, policy: Any) -> dict:
    """The ``policy`` of an :class:`EvalMethod`, checked and normalised (plain dict, float weights)."""
    where = f"EvalMethod {name!r}"
    if not isinstance(policy, Mapping) or policy.get("kind") not in POLICY_KINDS:
        raise ValueError(
            f"{where}: `policy` must be a dict with `kind` in {list(POLICY_KINDS)}, got {policy!r}; use "
            "EvalMethod.rewarded_soup(weights), EvalMethod.mod(weights) or EvalMethod.policy(key)."
        )
    kind = policy["kind"]
    allowed = {"kind", "key"} if kind == "policy" else {"kind", "weights"}
    extra = sorted(set(policy) - allowed)
    if extra:
        raise ValueError(f"{where}: unknown `policy` keys {extra} for kind {kind!r}; allowed: {sorted(allowed)}.")
    if kind == "policy":
        key = policy.get("key")
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{where}: `policy['key']` must be a non-empty string (a key of evaluate's "
                             f"`policies`), got {key!r}.")
        return {"kind": kind, "key": key}
    return {"kind": kind, "weights": _check_weights(where, kind, policy.get("weights"))}


def _check_weights(where: str, kind: str, weights: Any) -> dict[str, float]:
    """``{objective: weight}``: finite; RS: non-negative summing to 1; MOD: a positive sum."""
    example = "{'harmless': 0.8, 'helpful': 0.2}"
    if not isinstance(weights, Mapping) or not weights:
        raise TypeError(f"{where}: `weights` must be a non-empty dict {{objective: weight}}, got {weights!r}; e.g. "
                        f"{example} (one weight per per-objective policy).")
    check_unique_names(list(weights), "weights", kind="objective names")
    try:
        values = {str(g): float(w) for g, w in weights.items()}
    except (TypeError, ValueError):
        raise TypeError(f"{where}: `weights` must map objectives to numbers, got {dict(weights)!r}.") from None
    bad = [w for w in values.values() if not math.isfinite(w)]
    total = math.fsum(values.values())
    if bad:
        raise ValueError(f"{where}: `weights` must be finite, got {values}.")
    if kind == "rewarded_soup" and (min(values.values()) < 0 or abs(total - 1.0) > _SUM_TOLERANCE):
        raise ValueError(f"{where}: Rewarded Soups `weights` must be non-negative and sum to 1 (a soup "
                         f"interpolates), got {values} (sum {total:g}); e.g. {example}.")
    if kind == "mod" and total <= 0:
        raise ValueError(f"{where}: MOD `weights` must have a positive sum, got {values} (sum {total:g}); e.g. "
                         f"{example}.")
    return values
