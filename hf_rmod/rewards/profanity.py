"""``non_offensive`` objective: :class:`ProfanityReward` (optional; needs ``alt-profanity-check``)."""

from __future__ import annotations

import importlib.util

import torch

from .base import _check_texts

__all__ = ["ProfanityReward"]


class ProfanityReward:
    """``non_offensive`` objective: ``1 - P(offensive language)`` from ``alt-profanity-check``.

    Very fast (a bundled linear model) but a weak harmlessness signal (53.5% pair accuracy on the
    HH harmless preference pairs); it only sees the response.
    """

    def __init__(self):
        if importlib.util.find_spec("profanity_check") is None:
            raise ImportError(
                "ProfanityReward needs `alt-profanity-check`; install it with `pip install alt-profanity-check`."
            )
        from profanity_check import predict_prob

        self._predict_prob = predict_prob
        self.objectives = ["non_offensive"]

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        prompts, responses = _check_texts(prompts, responses)
        if not responses:
            return torch.zeros(0)
        prob = torch.as_tensor(self._predict_prob(responses), dtype=torch.float32)  # (n,)
        return 1.0 - prob

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
