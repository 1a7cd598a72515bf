"""Hub `custom_generate` entry point for Robust Multi-Objective Decoding (hf_rmod).

Thin adapter: all logic lives in the `hf_rmod` package (see requirements.txt).

    model.generate(input_ids, custom_generate="<this repo or directory>", trust_remote_code=True,
                   rmod_config=RMODConfig(value_model=...), max_new_tokens=128, do_sample=True)
"""

import hf_rmod.generation as _rmod


def generate(*args, model, rmod_config=None, **kwargs):
    if rmod_config is None:
        raise ValueError(
            "this custom_generate recipe runs RMOD and needs `rmod_config=hf_rmod.RMODConfig(value_model=...)`."
        )
    return _rmod.generate(model, *args, rmod_config=rmod_config, **kwargs)
