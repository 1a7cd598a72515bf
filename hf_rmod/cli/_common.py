"""Loaders shared by the ``hf-rmod`` runners: torch setup, local-path checks, policy / value model / records.

Runners call these through the module (``_common._setup_torch(...)``), so that a test can replace one.
"""

from __future__ import annotations

import os
from typing import Any

from ..experiments.configs import (
    ObjectivePolicyArguments,
    PolicyArguments,
    TrainValueArguments,
)


class UsageError(ValueError):
    """A flag combination the command cannot run with (reported like an argparse error)."""


def _setup_torch(policy: PolicyArguments) -> Any:
    """``--threads`` applied; returns the device of the run: ``--device``, else cuda when available, else cpu."""
    import torch

    from ..experiments.io import default_device

    if policy.threads is not None:
        torch.set_num_threads(policy.threads)
    return default_device(policy.device)


def _check_local_paths(**paths: str | None) -> None:
    """Before anything loads: a flag whose value looks like a local folder that does not exist fails at once
    (one line naming the flag, no Hub retries). ``paths``: flag name without dashes -> value."""
    from .._hub import check_local_path

    for name, value in paths.items():
        if value is not None:
            check_local_path(value, "--" + name.replace("_", "-"))


def _load_policy(policy: PolicyArguments, device: Any) -> tuple[Any, Any]:
    from ..defaults import load_default_policy

    kwargs: dict[str, Any] = {"device": device, "gguf_file": policy.gguf_file,
                              "trust_remote_code": policy.trust_remote_code}
    if policy.dtype is not None:
        kwargs["torch_dtype"] = policy.dtype
    return load_default_policy(policy.policy, **kwargs)


def _accelerator(policy: PolicyArguments) -> Any:
    """An ``accelerate.Accelerator`` under ``accelerate launch`` / torchrun (``WORLD_SIZE`` > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=policy.device == "cpu")  # else accelerate picks (one GPU per process)


def _load_value_head(path: str | None, device: Any, tokenizer: Any = None) -> Any:
    """``--value-head``: a MultiValueHead or a MiniLM text value model folder; default the default value model."""
    from ..defaults import load_value_model

    return load_value_model(path, tokenizer, device=device)


def _backbone_tokenizer(backbone: str, trust_remote_code: bool) -> Any:
    """The backbone folder's tokenizer (recorded as the head's fingerprint), or None when it has none."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(backbone, **({"trust_remote_code": True} if trust_remote_code else {}))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _records_and_objectives(args: TrainValueArguments | ObjectivePolicyArguments) -> tuple[list[dict], list[str]]:
    """``--objectives``: names (every record must have them), ``common`` (those every record has) or none (the
    first record's; every record must have the same objectives)."""
    from ..experiments.records import common_objectives, load_records

    spec = (args.objectives or "").strip()
    if spec == "common":
        records = load_records(args.records, allow_missing=True)
        return records, common_objectives(records)
    wanted = [g.strip() for g in spec.split(",") if g.strip()] or None
    records = load_records(args.records, wanted)
    return records, wanted or list(records[0]["rewards"])
