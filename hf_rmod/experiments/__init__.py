"""The experiment pipelines around the decoding core: sampling training data, training value heads (CD-FUDGE),
evaluating decoding methods.

- :mod:`.configs`: the settings dataclasses (every default, once; torch-free).
- :mod:`.io`: JSONL files, prompts, encoding, EOS cutting, progress (shared by all pipelines).
- :mod:`.sampling`: :func:`~.sampling.sample_responses` and its settings file (``<output>.settings.json``).
- :mod:`.records`: the records format: :func:`~.records.load_records`, :func:`~.records.split_by_prompt`.
- :mod:`.value_training`: :func:`~.value_training.train_value_head` and its pieces.
- :mod:`.methods`, :mod:`.evaluation`, :mod:`.results`, :mod:`.summary`, :mod:`.plots`:
  :func:`~.evaluation.evaluate` and what it writes.
- :mod:`.distill`: DISTILL-RMOD, :func:`~.distill.distill_rmod` (RMOD's responses, then SFT with ``Trainer``).
- :mod:`.objective_policies`: the per-objective policies of Rewarded Soups / MOD,
  :func:`~.objective_policies.train_objective_policies` (reward-ranked SFT on best-of-N; a stand-in for GRPO).
- :mod:`.demo`: ``hf-rmod demo``.

The core (``hf_rmod.config``, ``solver``, ``scoring``, ``generation``, ``modeling_value_head``, ``rewards``)
never imports from here.
"""
