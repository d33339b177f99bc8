"""Serving throughput: steered mixed batches vs all-unsteered, over loopback HTTP.

Starts the real server (uvicorn in a thread on 127.0.0.1) and sends rounds of
``--clients`` concurrent chat requests, greedy, ``--tokens`` new tokens each:
in an *unsteered* round every request is plain; in a *mixed* round half are
plain and half carry different trait mixes, so every batch holds several
mixes at once. Rounds alternate (and which goes first) in one process, which
cancels most of the noise of a shared machine. Prints tokens/s and p50/p99
request latency per kind.

``--load`` instead runs a bounded load test: ``--requests`` requests,
``--concurrency`` at a time, a quarter of them malformed (unknown trait,
strength outside the safe range, broken JSON, n=2, max_tokens above the cap),
and asserts that no response is a 5xx, every bad one is a 4xx and every good
one a 200.

    python benchmarks/serve.py [--model tiny|embedded] [--clients 8] [--tokens 64]
                               [--rounds 5] [--threads N]
    python benchmarks/serve.py --engine vllm|both [--model embedded] ...  (vLLM environment)
    python benchmarks/serve.py --load [--requests 200] [--concurrency 16]
    python benchmarks/serve.py --soak [--minutes 10] [--concurrency 4] [--model embedded]

``--soak`` keeps ``--concurrency`` requests always in flight for ``--minutes``
(greedy, ``--tokens`` each, half of them steered), and mixes in hostile ones: one
in four is malformed (as ``--load``), clients that hang up mid-request, and
readouts. The batch therefore never has to end. Every 10 s it samples the
server's resident memory and its decoding statistics (``/health``); at the end
it prints peak RSS, RSS at the end vs after the first minute, the per-row step
time of the last minute vs the first (the drift) and the 5xx count.

``--engine vllm`` serves through vLLM (:mod:`traitlens.engines.vllm`) instead of the
built-in engine; ``--engine both`` starts both servers on the same model and vectors and
interleaves their rounds on the same prompts, so their ratio is measured under the same
conditions. Run these from the vLLM environment (``make vllm``).

Last line: ``serve_steered_ratio=<mixed-batch tokens/s / all-unsteered tokens/s>``
(``vllm_steered_ratio=`` for vLLM; ``--engine both`` adds ``vllm_vs_builtin_unsteered=``
and ``vllm_vs_builtin_mixed=``, vLLM's tokens/s over the built-in engine's)
(with ``--load``: ``serve_load_5xx=<count>``; with ``--soak``: ``serve_soak_rss_ratio=``
RSS at the end / after the first minute, ``serve_soak_drift=`` per-row step time of the
last minute / the first, and ``serve_soak_5xx=<count>``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steer_overhead import QUESTIONS  # noqa: E402  (the same prompts as the steer benchmark)

MIXES = [{"E": 2.0}, {"N": -1.5, "A": 1.0}, {"O": 1.5, "C": -1.0}, {"E": -2.0, "N": 1.0}]


def _model(name: str) -> Any:
    if name == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import build_tiny

        return build_tiny("llama")
    from traitlens.models.loading import load_model

    return load_model(None if name == "embedded" else name, device="auto", dtype="auto")


def _vectors(tm: Any, run: str | None) -> Any:
    from traitlens.steer import TraitVector
    from traitlens.steer.vector_set import VectorSet

    if run is not None:
        return VectorSet.load(run, expect=tm.identity)
    generator = torch.Generator().manual_seed(0)
    vectors = VectorSet(tm.identity)
    layers = range(tm.n_layers)
    for trait in "OCEAN":
        directions = {
            layer: torch.randn(tm.identity.d_model, generator=generator) for layer in layers
        }
        vectors.add(
            TraitVector.from_directions(
                tm.identity,
                directions,
                spread=dict.fromkeys(directions, 1.0),
                trait=trait,
                method="mean_diff",
            )
        )
    return vectors


def _body(index: int, tokens: int, mix: dict[str, float] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "bench",
        "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        "max_tokens": tokens,
        "temperature": 0,
        # every request decodes exactly `tokens` tokens, so steering cannot change the
        # amount of work by moving the end-of-sequence token
        "ignore_eos": True,
    }
    if mix is not None:
        body["steering"] = {"traits": mix}
    return body


async def _round(
    http: Any, clients: int, tokens: int, mixed: bool
) -> tuple[float, list[float], int]:
    async def one(index: int) -> tuple[float, int]:
        mix = MIXES[(index // 2) % len(MIXES)] if mixed and index % 2 else None
        started = time.perf_counter()
        response = await http.post("/v1/chat/completions", json=_body(index, tokens, mix))
        response.raise_for_status()
        return time.perf_counter() - started, int(response.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.perf_counter() - started
    return wall, [latency for latency, _ in results], sum(n for _, n in results)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _throughput(urls: dict[str, str], args: argparse.Namespace) -> None:
    """Interleaved rounds of every (engine, unsteered|mixed) kind; the order rotates each
    round so no kind always runs first (or right after the same other kind)."""
    import httpx

    kinds = [(engine, mix) for engine in urls for mix in ("unsteered", "mixed")]
    stats: dict[tuple[str, str], dict[str, list[float]]] = {
        kind: {"rate": [], "latency": []} for kind in kinds
    }
    clients = {engine: httpx.AsyncClient(base_url=url, timeout=600) for engine, url in urls.items()}
    try:
        for http in clients.values():
            await _round(http, args.clients, 4, mixed=True)  # warm-up
        for number in range(args.rounds):
            shift = number % len(kinds)
            order = kinds[shift:] + kinds[:shift]
            if number % 2:
                order.reverse()
            for engine, kind in order:
                wall, latencies, tokens = await _round(
                    clients[engine], args.clients, args.tokens, mixed=kind == "mixed"
                )
                stats[engine, kind]["rate"].append(tokens / wall)
                stats[engine, kind]["latency"].extend(latencies)
                print(
                    f"round {number} {engine:7s} {kind:9s} {tokens} tokens in {wall:.2f} s",
                    flush=True,
                )
        for engine, http in clients.items():
            health = (await http.get("/health")).json()
            print(
                f"{engine} engine: {health['requests']} requests, largest batch "
                f"{health['largest_batch']}"
            )
    finally:
        for http in clients.values():
            await http.aclose()
    rate = {kind: statistics.median(values["rate"]) for kind, values in stats.items()}
    for (engine, kind), values in stats.items():
        print(
            f"{engine:7s} {kind:9s}: {rate[engine, kind]:.1f} tokens/s (median of "
            f"{len(values['rate'])} rounds), latency p50 {_quantile(values['latency'], 0.5):.2f} s "
            f"p99 {_quantile(values['latency'], 0.99):.2f} s"
        )
    for engine in urls:
        ratio = rate[engine, "mixed"] / rate[engine, "unsteered"]
        name = "serve_steered_ratio" if engine == "builtin" else f"{engine}_steered_ratio"
        print(f"{name}={ratio:.4f}")
    if len(urls) > 1:
        for kind in ("unsteered", "mixed"):
            print(f"vllm_vs_builtin_{kind}={rate['vllm', kind] / rate['builtin', kind]:.4f}")


BAD = [
    ({"steering": {"traits": {"Q": 1.0}}}, "unknown trait"),
    ({"steering": {"traits": {"E": 99}}}, "strength outside the safe range"),
    ({"n": 3}, "n=3"),
    ({"max_tokens": 10_000}, "max_tokens above the cap"),
    (None, "malformed JSON"),
]


async def _malformed(http: Any, index: int, which: int, tokens: int) -> Any:
    """Send the malformed request ``BAD[which]`` (broken JSON when its body is None)."""
    extra, _ = BAD[which]
    if extra is None:
        return await http.post(
            "/v1/chat/completions",
            content=b'{"messages": [',
            headers={"content-type": "application/json"},
        )
    return await http.post("/v1/chat/completions", json={**_body(index, tokens, None), **extra})


async def _load(url: str, args: argparse.Namespace) -> None:
    import httpx

    semaphore = asyncio.Semaphore(args.concurrency)
    codes: dict[str, list[int]] = {"good": [], "bad": []}

    async def one(http: Any, index: int) -> None:
        async with semaphore:
            if index % 4 == 3:
                response = await _malformed(http, index, (index // 4) % len(BAD), 8)
                codes["bad"].append(response.status_code)
            else:
                mix = MIXES[index % len(MIXES)] if index % 2 else None
                response = await http.post("/v1/chat/completions", json=_body(index, 8, mix))
                codes["good"].append(response.status_code)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await asyncio.gather(*(one(http, i) for i in range(args.requests)))
        health = (await http.get("/health")).json()
    wall = time.perf_counter() - started
    everything = codes["good"] + codes["bad"]
    server_errors = sum(code >= 500 for code in everything)
    print(
        f"{len(everything)} requests ({len(codes['bad'])} malformed) in {wall:.1f} s, "
        f"{args.concurrency} at a time; status counts: "
        + ", ".join(f"{c}×{everything.count(c)}" for c in sorted(set(everything)))
    )
    print(
        f"health after: {health['status']}, {health['batches']} batches, largest "
        f"{health['largest_batch']}, {health['joined_running_batch']} requests joined a "
        "running batch"
    )
    assert server_errors == 0, f"{server_errors} responses were 5xx"
    assert all(400 <= code < 500 for code in codes["bad"]), codes["bad"]
    assert all(code == 200 for code in codes["good"]), codes["good"]
    print(f"serve_load_5xx={server_errors}")


def _rss_mb() -> tuple[float, float]:
    """(resident, peak resident) MiB of this process (the server runs in a thread here)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, amount = line.split(":", 1)
            values[key] = int(amount.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


async def _soak(url: str, args: argparse.Namespace) -> None:
    import httpx

    end = time.perf_counter() + args.minutes * 60
    codes: dict[str, list[int]] = {"good": [], "bad": [], "readout": []}
    hung_up = [0]

    async def client(http: Any, number: int) -> None:
        index = number
        while time.perf_counter() < end:
            index += args.concurrency
            kind = index % 8
            if kind == 3:  # malformed
                response = await _malformed(http, index, (index // 8) % len(BAD), args.tokens)
                codes["bad"].append(response.status_code)
            elif kind == 5:  # a client that hangs up mid-request
                try:
                    await http.post(
                        "/v1/chat/completions",
                        json=_body(index, args.tokens, MIXES[0]),
                        timeout=0.05,
                    )
                except httpx.TimeoutException:
                    hung_up[0] += 1
            elif kind == 7:  # a readout while the batch runs
                readout = {"prompt": QUESTIONS[0], "answer": "I would go to a party."}
                response = await http.post("/v1/traitlens/readout", json=readout)
                codes["readout"].append(response.status_code)
            else:
                mix = MIXES[index % len(MIXES)] if index % 2 else None
                response = await http.post(
                    "/v1/chat/completions", json=_body(index, args.tokens, mix)
                )
                codes["good"].append(response.status_code)

    samples: list[tuple[float, float, dict[str, Any]]] = []

    async def sampler(http: Any) -> None:
        started = time.perf_counter()
        while time.perf_counter() < end:
            health = (await http.get("/health")).json()
            samples.append((time.perf_counter() - started, _rss_mb()[0], health))
            await asyncio.sleep(10)

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await asyncio.gather(sampler(http), *(client(http, n) for n in range(args.concurrency)))
        health = (await http.get("/health")).json()
    samples.append((args.minutes * 60, _rss_mb()[0], health))

    def per_row_step(first: dict[str, Any], last: dict[str, Any]) -> float:
        rows = last["decoded_rows"] - first["decoded_rows"]
        return (last["decode_seconds"] - first["decode_seconds"]) / max(rows, 1)

    minute = [s for s in samples if s[0] <= 60.5]
    final = [s for s in samples if s[0] >= samples[-1][0] - 60.5]
    first_step = per_row_step(minute[0][2], minute[-1][2])
    last_step = per_row_step(final[0][2], final[-1][2])
    rss_first, rss_end = minute[-1][1], samples[-1][1]
    everything = codes["good"] + codes["bad"] + codes["readout"]
    server_errors = sum(code >= 500 for code in everything)
    print(
        f"{len(everything) + hung_up[0]} requests in {args.minutes:g} min, "
        f"{args.concurrency} always in flight: {len(codes['good'])} good, "
        f"{len(codes['bad'])} malformed, {len(codes['readout'])} readouts, "
        f"{hung_up[0]} hung up; status counts: "
        + ", ".join(f"{c}×{everything.count(c)}" for c in sorted(set(everything)))
    )
    print(
        f"engine: {health['batches']} batches, {health['joined_running_batch']} joined a "
        f"running batch, {health['cancelled']} cancelled, widest mask "
        f"{health['widest_batch_columns']} columns, {health['decode_steps']} steps"
    )
    print(
        f"RSS {rss_first:.0f} MiB after the first minute, {rss_end:.0f} MiB at the end, "
        f"peak {_rss_mb()[1]:.0f} MiB; per-row step {first_step * 1e3:.2f} ms in the first "
        f"minute, {last_step * 1e3:.2f} ms in the last"
    )
    assert all(code == 200 for code in codes["good"] + codes["readout"]), "a good request failed"
    assert all(400 <= code < 500 for code in codes["bad"]), codes["bad"]
    print(
        f"serve_soak_rss_ratio={rss_end / rss_first:.3f} "
        f"serve_soak_drift={last_step / first_step:.3f} serve_soak_5xx={server_errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (default), embedded, or a path/id")
    parser.add_argument("--vectors", default=None, help="run directory with vectors.json")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--load", action="store_true", help="bounded load test instead")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--soak", action="store_true", help="bounded soak instead")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--engine",
        default="builtin",
        choices=["builtin", "vllm", "both"],
        help="which engine serves (vllm, both: run from the vLLM environment, make vllm); "
        "both interleaves the two on the same prompts",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from traitlens.serve import create_app
    from traitlens.serve.server import running_server

    tm = _model(args.model)
    vectors = _vectors(tm, args.vectors)
    engines = ["builtin", "vllm"] if args.engine == "both" else [args.engine]
    if len(engines) > 1 and (args.load or args.soak):
        parser.error("--load and --soak run one engine: pick --engine builtin or vllm")
    apps = {}
    decoders = []
    for engine in engines:
        decoder = None
        if engine == "vllm":
            from traitlens.engines.vllm import VllmEngine

            decoder = VllmEngine(
                tm,
                max_batch=args.max_batch,
                queue_limit=max(64, args.concurrency * 2),
            )
            print(f"vLLM engine loaded in {decoder.load_seconds:.1f} s", flush=True)
            decoders.append(decoder)
        apps[engine] = create_app(
            tm,
            vectors,
            max_batch=args.max_batch,
            queue_limit=max(64, args.concurrency * 2),
            max_tokens_cap=max(args.tokens, 64),
            request_timeout=600,
            engine=decoder,
        )
    print(f"model {tm.identity.name} on {tm.device}, max batch {args.max_batch}", flush=True)
    with contextlib.ExitStack() as stack:
        for decoder in decoders:
            stack.callback(decoder.close)
        urls = {engine: stack.enter_context(running_server(app)) for engine, app in apps.items()}
        url = urls[engines[0]]
        if args.soak:
            asyncio.run(_soak(url, args))
        elif args.load:
            asyncio.run(_load(url, args))
        else:
            asyncio.run(_throughput(urls, args))


if __name__ == "__main__":
    main()
