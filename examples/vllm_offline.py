"""Per-request trait mixes in vLLM's own offline API (``vllm.LLM``), through the general
plugin: run from the vLLM environment (``make vllm``) with a run that has vectors.

    TRAITLENS_VLLM_STEERING=1 .venv-vllm/bin/python examples/vllm_offline.py runs/demo

With ``TRAITLENS_VLLM_STEERING=1`` the plugin (entry point ``vllm.general_plugins``) gives
every vLLM engine the traitlens worker extension and eager mode. A request carries its
mix as rows in ``SamplingParams.extra_args["traitlens"]``, compiled by traitlens exactly as
``traitlens serve`` compiles them; requests with different mixes share the batch.
"""

import sys

from traitlens.engines.vllm import engine_model_path
from traitlens.engines.vllm_worker import PAYLOAD_KEY, encode_rows
from traitlens.models.loading import load_model
from traitlens.serve.steering import SteeringCatalog
from traitlens.steer.vector_set import VectorSet

QUESTION = "How would you spend a free Saturday afternoon?"


def main() -> None:
    from vllm import LLM, SamplingParams

    tm = load_model(None, dtype="float32")  # compiles the rows; vLLM loads its own copy
    catalog = SteeringCatalog(tm, VectorSet.load(sys.argv[1], expect=tm.identity))
    # float32 like traitlens' copy: vLLM's "auto" reads bfloat16 from the config, whose
    # rounding parts greedy answers at near-ties (and varies from run to run on CPU)
    llm = LLM(engine_model_path(tm), dtype="float32", max_model_len=1024, seed=0)
    llm.collective_rpc("traitlens_install")  # hooks on every rank's decoder layers
    prompt = {"prompt_token_ids": list(tm.format(None, QUESTION).input_ids)}
    mixes = [None, {"E": 2.0}, {"E": -2.0}]
    params = [
        SamplingParams(
            max_tokens=24,
            temperature=0,
            extra_args={PAYLOAD_KEY: encode_rows(catalog.resolve(mix).rows)} if mix else None,
        )
        for mix in mixes
    ]
    for mix, out in zip(mixes, llm.generate([prompt] * len(mixes), params), strict=True):
        print(mix, "->", repr(out.outputs[0].text))


if __name__ == "__main__":
    main()
