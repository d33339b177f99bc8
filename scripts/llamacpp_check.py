"""Steer llama.cpp and traitlens with the same vector and print how close they are.

    python scripts/llamacpp_check.py --run RUN [--trait E] [--strength 2] [--layers 10-14]

Builds llama.cpp from the llama-cpp-python sdist on first use (cached in
~/.cache/traitlens/llama.cpp-<version>), exports RUN's vector as a control-vector
GGUF, runs llama-server / llama-completion on the embedded model's own Q4_1 GGUF
with --control-vector-scaled FILE 1 --control-vector-layer-range A B, and compares
with traitlens' hook steering (positions="all") on the float32 dequantized model.
These are the figures the README and the closing note quote.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--trait", default="E")
    parser.add_argument("--method", default="mean_diff")
    parser.add_argument("--strength", type=float, default=2.0)
    parser.add_argument("--layers", default="10-14")
    parser.add_argument("--json", type=Path, help="also write the full result here")
    args = parser.parse_args()

    from traitlens.engines import llamacpp
    from traitlens.engines.llamacpp_check import check_llamacpp, describe
    from traitlens.models import load_model
    from traitlens.models.loading import embedded_gguf_path
    from traitlens.steer import VectorSet, parse_layers

    started = time.perf_counter()
    built = llamacpp.build()
    print(
        f"llama.cpp (llama-cpp-python {built.version} sdist): {built.root} "
        f"[{time.perf_counter() - started:.0f} s]"
    )
    vector = VectorSet.load(args.run).get(args.trait, args.method)
    tm = load_model(None, device="cpu", dtype="float32")
    layers = parse_layers(args.layers, tm.identity.n_layers)
    with tempfile.TemporaryDirectory() as tmp:
        check = check_llamacpp(
            tm,
            vector,
            built,
            embedded_gguf_path(),
            Path(tmp),
            strength=args.strength,
            layers=layers,
        )
    for key, value in describe(check).items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    print("per prompt: agree steered / plain (of", check.n_predict, "tokens), shift r, random r")
    for row in check.prompts:
        print(
            f"  {row.agree_steered:2d} / {row.agree_plain:2d}   r={row.shift_r:.3f}  "
            f"random r={row.shift_r_random:+.3f}  {row.prompt[:50]}"
        )
    print("steered, llama.cpp :", repr(check.prompts[0].text_llamacpp))
    print("steered, traitlens :", repr(check.prompts[0].text_traitlens))
    print(
        "llama-completion   :",
        repr(check.cli_text.strip()[:120]),
        "(matches llama-server:",
        check.cli_matches_server,
        ")",
    )
    if args.json:
        args.json.write_text(json.dumps(check.to_dict(), indent=2))
    print(f"[{time.perf_counter() - started:.0f} s]")


if __name__ == "__main__":
    main()
