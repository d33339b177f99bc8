"""The study: configuration precedence, the evaluation maths, and (slow) the whole
pipeline on the embedded model — report sections, resume after a kill, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

from traitlens.artifact_io import Artifact, ModelIdentity
from traitlens.design.rows import control_seed, matched_control, random_vector_like
from traitlens.design.stages import Plan, StageContext, run_plan
from traitlens.errors import ArtifactError, DataError
from traitlens.evaluate.interventions import effect, held_out_boundary, success_rate
from traitlens.evaluate.results import (
    Effect,
    EvalBaseline,
    Measurement,
    PersonaResult,
    Success,
)
from traitlens.neurons.selected import SelectedNeurons
from traitlens.provenance import Job, RunConflictError, RunManifest, provenance
from traitlens.report.study_report import SECTION_IDS
from traitlens.steer import band_layers
from traitlens.study import resolve_config
from traitlens.study.persona import PersonaEvaluation

# a one-trait study small enough for CI, used by the slow tests
MICRO = {
    "design": "persona",
    "traits": ["E"],
    "dose_traits": ["E"],
    "dose_strengths": [4.0],
    "dose_gammas": [2.0],
    "eval_methods": ["mean_diff", "neurons"],
}


def test_config_precedence(tmp_path: Path) -> None:
    assert resolve_config().n_questions == 24
    quick = resolve_config("quick")
    assert quick.n_questions == 4 and quick.profile == "quick"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("n_questions: 7\nstrength: 2.5\n")
    cfg = resolve_config("quick", yaml_file, {"strength": 3.0, "seed": None})
    assert (cfg.n_questions, cfg.strength, cfg.seed) == (7, 3.0, 0)  # CLI > YAML > profile


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"profile": "huge"}, "unknown profile"),
        ({"overrides": {"traits": ["X"]}}, "unknown trait"),
        ({"overrides": {"strength": 500}}, "strength"),
        ({"overrides": {"eval_methods": ["magic"]}}, "unknown methods"),
        ({"overrides": {"n_questoins": 3}}, "n_questoins"),
        # the edit's own bound, when the config is built: gamma=20 used to pass here (≤ 50)
        # and fail at the evaluation stage, after every earlier stage had run
        ({"overrides": {"gamma": 20}}, r"gamma 20 is out of range: need 0 < gamma <= 10"),
        ({"overrides": {"dose_gammas": [1.0, 40.0]}}, "dose_gammas 40 is out of range"),
        ({"overrides": {"dose_strengths": [float("nan")]}}, "not a finite number"),
    ],
)
def test_bad_config_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        resolve_config(**kwargs)


def test_every_config_shares_the_interventions_limits() -> None:
    """One bound per quantity, whichever entry point builds the edit."""
    from pydantic import ValidationError

    from traitlens.concepts.config import ConceptConfig
    from traitlens.limits import MAX_GAMMA, MAX_STRENGTH
    from traitlens.steer import MAX_GAMMA as STEER_GAMMA
    from traitlens.steer import MAX_STRENGTH as STEER_STRENGTH
    from traitlens.sweep.config import SweepConfig

    assert (STEER_GAMMA, STEER_STRENGTH) == (MAX_GAMMA, MAX_STRENGTH)
    for build in (
        lambda: resolve_config(overrides={"gamma": MAX_GAMMA * 1.5}),
        lambda: ConceptConfig(gammas=[MAX_GAMMA * 1.5]),
        lambda: SweepConfig(gammas=[MAX_GAMMA * 1.5]),
    ):
        with pytest.raises((DataError, ValidationError), match="out"):
            build()
    assert resolve_config(overrides={"gamma": MAX_GAMMA}).gamma == MAX_GAMMA
    assert SweepConfig(strengths=[MAX_STRENGTH]).strengths == [MAX_STRENGTH]


def test_bad_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        resolve_config(yaml_path=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(DataError, match="mapping"):
        resolve_config(yaml_path=bad)


def test_success_rate_hand_computed() -> None:
    # pushing high (sign +1) from below the boundary 0: prompts at -1, -2, +3 (ineligible)
    result = success_rate([-1.0, -2.0, 3.0], [0.5, -0.5, 4.0], sign=1.0)
    assert result.n_eligible == 2 and result.rate == 0.5
    # pushing low with a calibrated boundary of 1: eligible are readouts above 1
    low = success_rate([2.0, 3.0, 0.0], [0.5, 1.5, -1.0], sign=-1.0, boundary=1.0)
    assert low.n_eligible == 2 and low.rate == 0.5
    assert math.isnan(success_rate([1.0], [2.0], sign=1.0).rate)


def test_held_out_boundary_is_midpoint_of_pole_means() -> None:
    baseline = _measurement(opposite_readout={"E|high": [-3.0, -1.0], "E|low": [1.0, 5.0]})
    assert held_out_boundary(baseline, "E") == pytest.approx((-2.0 + 3.0) / 2)
    assert held_out_boundary(_measurement(opposite_readout={}), "E") is None


def test_effect_judges_success_against_the_held_out_boundary() -> None:
    """Asymmetric fixture: the probe reads every held-out prompt 'high' (its zero drifted),
    so against zero nothing is eligible for 'push high'; against the held-out midpoint
    (+4) the low-persona prompts are eligible and two of three cross."""
    baseline = _measurement(
        neutral_readout=[[0.0], [0.0]],
        opposite_readout={"E|high": [1.0, 2.0, 3.0], "E|low": [6.0, 6.0]},
        questionnaire={"E": {"a": 3.0}},
        forced_choice={"E": {"x": 0.5}},
    )
    steered = replace(baseline, opposite_readout={"E|high": [5.0, 4.5, 3.5]})
    success = effect(baseline, steered, ["E"], "E", "high").success
    assert success is not None
    assert success.boundary == pytest.approx(4.0)
    assert success.n_eligible == 3
    assert success.rate == pytest.approx(2 / 3)
    assert "held-out midpoint" in (success.boundary_source or "")
    against_zero = success_rate([1.0, 2.0, 3.0], [5.0, 4.5, 3.5], sign=1.0)
    assert against_zero.n_eligible == 0  # what the old, uncalibrated rule reported
    # without the other pole's readouts the row says the boundary could not be computed
    partial = replace(baseline, opposite_readout={"E|high": [1.0, 2.0, 3.0]})
    fallback = effect(partial, steered, ["E"], "E", "high").success
    assert fallback is not None and fallback.boundary == 0.0
    assert "cannot be computed" in (fallback.boundary_source or "")


def test_effect_shifts_signed_toward_target() -> None:
    baseline = _measurement(
        neutral_readout=[[0.0, 1.0], [0.0, 1.0]],
        opposite_readout={"E|low": [2.0, 2.0], "E|high": [-2.0, -2.0]},
        questionnaire={"E": {"a": 3.0, "b": 3.0}, "A": {"c": 2.0, "d": 2.0}},
        forced_choice={"E": {"x": 0.5, "y": 0.5}, "A": {"z": 0.5, "w": 0.5}},
    )
    steered = _measurement(
        neutral_readout=[[-1.0, 1.0], [-3.0, 1.0]],
        opposite_readout={"E|low": [-1.0, 3.0]},
        questionnaire={"E": {"a": 2.0, "b": 2.5}, "A": {"c": 2.0, "d": 2.0}},
        forced_choice={"E": {"x": 0.4, "y": 0.4}, "A": {"z": 0.5, "w": 0.5}},
        perplexity=12.0,
    )
    result = effect(baseline, steered, ["E", "A"], "E", "low")
    assert result.readout_shift["E"].shift == pytest.approx(-2.0)
    assert result.target_readout_shift == pytest.approx(2.0)  # toward low = positive
    assert result.target_questionnaire_shift == pytest.approx(0.75)
    assert result.questionnaire_shift["A"].shift == 0.0
    assert result.target_forced_choice_shift == pytest.approx(0.1)
    assert result.perplexity_ratio == pytest.approx(1.2)
    assert result.success is not None
    assert result.success.rate == 0.5 and result.success.boundary == 0.0
    # the typed summary writes the JSON eval.json has always held, and reads it back
    assert Effect.from_dict(result.to_dict()) == result
    assert "capability_change" not in result.to_dict()  # absent parts are left out


def test_persona_evaluation_round_trips_typed_and_names_the_fix_when_missing(
    tmp_path: Path,
) -> None:
    baseline = _measurement(
        neutral_readout=[[0.0], [1.0]],
        opposite_readout={"E|high": [-1.0, -2.0], "E|low": [1.0, 2.0]},
        questionnaire={"E": {"a": 3.0, "b": 2.0}},
        forced_choice={"E": {"x": 0.5, "y": 0.4}},
    )
    steered = replace(baseline, opposite_readout={"E|high": [0.5, -0.5]}, perplexity=11.0)
    row = PersonaResult(
        "E__high__mean_diff__real",
        "E",
        "high",
        "mean_diff",
        False,
        effect(baseline, steered, ["E"], "E", "high"),
        "k" * 64,
        {"strength": 2.0},
    )
    evaluation = PersonaEvaluation(
        ["E"],
        [1, 2],
        {"E": 3},
        EvalBaseline({"E": 2.5}, {"E": 0.45}, 10.0, None, 0.5),
        [row],
        {},
        {},
        {},
    )
    path = str(tmp_path / "eval.json")  # a str path works as well as a Path
    evaluation.save(path)
    loaded = PersonaEvaluation.load(path)
    assert isinstance(loaded.results[0].effect.success, Success)
    assert loaded.results[0].size == {"strength": 2.0}
    # equal field by field (compared as JSON text: a NaN effect size is not == itself)
    assert json.dumps(loaded.to_dict()) == json.dumps(evaluation.to_dict())
    assert json.loads(Path(path).read_text())["results"][0]["strength"] == 2.0  # flat, as before
    with pytest.raises(ArtifactError, match="run `traitlens study` first"):
        PersonaEvaluation.load(tmp_path / "missing.json")


def test_measurement_reads_rows_written_before_the_types_and_refuses_broken_ones() -> None:
    old_row = {
        "neutral_readout": [[0.5]],
        "opposite_readout": {},
        "questionnaire": {"E": {"a": 3.0}},
        "questionnaire_label_mass": 0.2,
        "forced_choice": {"E": {"x": 0.5}},
        "perplexity": 9.0,
        "answers": ["hi"],
        "distinct_2": 1.0,
        "repetition": 0.0,
    }
    measured = Measurement.from_dict(old_row)
    assert measured.answers == ["hi"] and measured.capability is None
    assert measured.to_dict() == old_row  # same JSON, same order: a resumed run reuses it
    assert list(measured.to_dict()) == list(old_row)
    with pytest.raises(ArtifactError, match="lacks forced_choice"):
        Measurement.from_dict({k: v for k, v in old_row.items() if k != "forced_choice"})


def _measurement(**values: Any) -> Measurement:
    defaults: dict[str, Any] = {
        "neutral_readout": [[0.0]],
        "opposite_readout": {},
        "questionnaire": {},
        "questionnaire_label_mass": 0.5,
        "forced_choice": {},
        "perplexity": 10.0,
    }
    return Measurement(**(defaults | values))


def _neurons(layers: list[int], delta: list[float]) -> SelectedNeurons:
    n = len(layers)
    return SelectedNeurons(
        torch.tensor(layers), torch.arange(n), torch.tensor(delta), torch.ones(n)
    )


def test_plan_runs_stages_in_declared_order_and_refuses_a_second_declaration(
    tmp_path: Path,
) -> None:
    plan = Plan()
    seen: list[str] = []

    @plan.stage("first", "makes 1")
    def first(ctx: StageContext) -> int:
        seen.append("first")
        return 1

    @plan.stage("second", "adds 1 to the first")
    def second(ctx: StageContext) -> int:
        seen.append("second")
        return int(ctx["first"]) + 1

    context = StageContext.open(None, tmp_path / "run", None, lambda message: None)  # type: ignore[arg-type]
    run_plan(plan.stages, context)
    assert seen == ["first", "second"] and context["second"] == 2
    with pytest.raises(ValueError, match="declared twice"):
        plan.stage("first", "again")(first)


@dataclass
class _Counted(Artifact, stem="counted", kind_name="counted", what="counted thing"):
    """The smallest artifact: one tensor and the input key it was made under."""

    identity: ModelIdentity
    values: torch.Tensor
    config: dict[str, Any]

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"values": self.values}

    def _meta(self) -> dict[str, Any]:
        return {"config": self.config}

    @classmethod
    def _from_saved(cls, saved: Any) -> _Counted:
        return cls(saved.identity, saved.tensors["values"], saved.meta["config"])


def test_run_plan_alone_persists_a_stage_job_and_runs_its_follow_ups(tmp_path: Path) -> None:
    """A stage returns its Job and declares where it is saved: run_plan loads it when
    saved from the same inputs, computes and saves it otherwise, refuses one made from
    other inputs unless forced, and calls the stage's follow-ups with the artifact."""
    identity = ModelIdentity("hand-made", "none", 2, 4, 8, "0" * 16)
    computed: list[float] = []
    followed: list[float] = []

    def plan_for(scale: float) -> Plan:
        plan = Plan()

        def note(ctx: StageContext, made: _Counted) -> None:
            followed.append(float(made.values.sum()))

        @plan.stage("counted", "a keyed artifact", saves_in="sub", then=[note])
        def counted(ctx: StageContext) -> Job[_Counted]:
            prov = provenance("probes", model=identity, config={"scale": scale})

            def compute() -> _Counted:
                computed.append(scale)
                return _Counted(identity, torch.full((3,), scale), {"inputs_key": prov.key})

            return Job(_Counted, "probes", prov, compute, identity)

        return plan

    run = tmp_path / "run"

    def make(scale: float, force: bool = False) -> Any:
        ctx = StageContext.open(None, run, None, lambda m: None, force=force)  # type: ignore[arg-type]
        return run_plan(plan_for(scale).stages, ctx)["counted"]

    first = make(1.0)
    assert (run / "sub" / "counted.json").exists() and RunManifest(run).get("probes")
    again = make(1.0)
    assert computed == [1.0] and torch.equal(again.values, first.values)
    with pytest.raises(RunConflictError):
        make(2.0)
    assert computed == [1.0]
    assert float(make(2.0, force=True).values[0]) == 2.0
    assert computed == [1.0, 2.0] and followed == [3.0, 3.0, 6.0]


def test_restrict_and_matched_control() -> None:
    real = _neurons([1, 3, 3, 7], [0.2, 0.3, 0.4, 0.5])
    assert real.in_layers([3]).layers.tolist() == [3, 3]
    random = SelectedNeurons(
        torch.tensor([7, 3, 1, 3]),
        torch.tensor([9, 8, 7, 6]),
        torch.zeros(4),
        torch.full((4,), 2.0),
    )
    control = matched_control(real, random)
    assert control.layers.tolist() == [1, 3, 3, 7]
    assert control.delta.tolist() == pytest.approx([0.2, 0.3, 0.4, 0.5])  # same boost size
    assert set(control.indices.tolist()) == {9, 8, 7, 6}
    with pytest.raises(ValueError, match="matched"):
        matched_control(real, _neurons([1, 1, 3, 7], [0, 0, 0, 0]))


def test_random_direction_controls_are_per_trait_and_stable(tiny_llama) -> None:
    from traitlens.steer import TraitVector

    vector = TraitVector.from_directions(
        tiny_llama.identity,
        {1: torch.ones(tiny_llama.identity.d_model, dtype=torch.float64)},
        spread={1: 3.0},
        trait="O",
        method="mean_diff",
    )
    seeds = {t: control_seed(0, t) for t in "OCEAN"}
    assert len(set(seeds.values())) == 5  # five independent controls, not one shared
    assert control_seed(0, " o") == seeds["O"] and control_seed(1, "O") != seeds["O"]
    a = random_vector_like(vector, seeds["O"])
    b = random_vector_like(vector, seeds["O"])
    c = random_vector_like(vector, seeds["C"])
    assert torch.equal(a.direction(1), b.direction(1))
    assert not torch.allclose(a.direction(1), c.direction(1))
    assert float(a.spread[0]) == pytest.approx(3.0)  # same size as the real vector


def test_steer_band() -> None:
    assert band_layers(30, (1 / 3, 1 / 2)) == [10, 11, 12, 13, 14]
    assert band_layers(4, (1 / 3, 1 / 2)) == [1]


class _Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section" and values.get("id"):
            self.ids.append(str(values["id"]))
        if tag == "img" and str(values.get("src", "")).startswith("data:image/png;base64,"):
            self.images += 1


def _study(out: Path, config: Path | None = None, profile: str = "test") -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "traitlens.cli.main",
        "study",
        "--profile",
        profile,
        "--out",
        str(out),
    ]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def _yaml(path: Path, values: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow
def test_study_produces_report_with_every_section(study_run) -> None:
    """`traitlens study` end to end (the test profile: both designs, all five traits, every
    report section)."""
    out, _ = study_run
    parser = _Sections()
    parser.feed((out / "report.html").read_text())
    assert set(SECTION_IDS) <= set(parser.ids), parser.ids
    assert parser.images >= 8
    evaluation = json.loads((out / "eval.json").read_text())
    assert {r["trait"] for r in evaluation["results"]} == {"O", "C", "E", "A", "N"}
    assert {r["pole"] for r in evaluation["results"]} == {"high", "low"}
    assert (out / "eval.csv").read_text().count("\n") == len(evaluation["results"]) + 1
    # eval.json reads back as typed results and writes the same JSON again
    typed = PersonaEvaluation.load(out / "eval.json")
    assert all(isinstance(r.effect, Effect) for r in typed.results)
    assert json.loads(json.dumps(typed.to_dict(), allow_nan=True)) == json.loads(
        (out / "eval.json").read_text()
    )
    real = [r for r in typed.results if r.method == "mean_diff" and not r.control]
    assert real and all(r.effect.success is not None for r in real)
    # the concept design ran in the same study (design "both" is the default)
    concept = json.loads((out / "concepts" / "eval.json").read_text())
    assert {r["trait"] for r in concept["results"]} == {"O", "C", "E", "A", "N"}
    assert {r["kind"] for r in concept["results"]} == {"boost", "suppress", "direction"}
    assert {r["control"] for r in concept["results"]} == {True, False}
    for name in ("concept_probe_depth", "concept_item_map", "concept_tsr", "concept_gap"):
        assert (out / "figures" / f"{name}.png").exists(), name
    probes = json.loads((out / "concepts" / "probes.json").read_text())
    # the design's signal on the embedded model: the domain probe beats chance and its control
    assert probes["summary"]["best_accuracy"] > probes["summary"]["control_at_best"] + 0.1


@pytest.mark.slow
def test_study_resumes_after_kill_without_recomputing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = _yaml(tmp_path / "micro.yaml", MICRO)
    process = _study(out, config)
    deadline = time.time() + 1500
    rows = out / "eval" / "rows"
    # kill -9 once the first intervention row exists: mid-way through evaluation
    while time.time() < deadline and not (rows.exists() and len(list(rows.glob("*.json"))) >= 2):
        if process.poll() is not None:
            pytest.fail("study ended before it could be interrupted:\n" + process.stdout.read())
        time.sleep(1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {
        p: p.stat().st_mtime_ns
        for p in [
            out / "prompts.jsonl",
            out / "answers.jsonl",
            out / "probes.safetensors",
            out / "neurons.safetensors",
            out / "vectors.safetensors",
            out / "activations" / "answer" / "activations.safetensors",
            *rows.glob("*.json"),
        ]
    }
    assert not (out / "report.html").exists()
    process = _study(out, config)
    log, _ = process.communicate(timeout=1500)
    assert process.returncode == 0, log[-3000:]
    assert "(reused)" in log
    for path, stamp in finished.items():
        assert path.stat().st_mtime_ns == stamp, f"{path.name} was recomputed"
    assert (out / "report.html").exists()


@pytest.mark.slow
def test_bad_study_input_is_refused_before_any_work(tmp_path: Path) -> None:
    """A bad statements file or an unreachable judge used to surface mid-study (after the
    capture); both are now refused before the model loads, with nothing written."""
    out = tmp_path / "run"
    empty = tmp_path / "statements.csv"
    empty.write_text("")
    config = _yaml(tmp_path / "bad.yaml", {**MICRO, "statements_file": str(empty)})
    process = _study(out, config)
    log, _ = process.communicate(timeout=300)
    assert process.returncode == 2, log[-3000:]
    assert "statements.csv is empty" in log and "Traceback" not in log
    assert "model:" not in log  # refused before the model loaded
    assert not (out / "prompts.jsonl").exists()
    config = _yaml(tmp_path / "judge.yaml", {**MICRO, "judge_url": "http://127.0.0.1:9"})
    process = _study(out, config)
    log, _ = process.communicate(timeout=300)
    assert process.returncode == 2, log[-3000:]
    assert "127.0.0.1:9" in log and "Traceback" not in log
    assert not (out / "prompts.jsonl").exists()


def test_cli_progress_lines_keep_their_stage_headers(capsys: pytest.CaptureFixture[str]) -> None:
    """A stage header is text, not rich markup: ``[concept 1/5]`` once vanished from the
    concepts and fingerprint commands' progress."""
    from traitlens.cli.common import log_line

    log_line("[concept 1/5] items: item bank and held-out split")
    assert "[concept 1/5] items: item bank" in capsys.readouterr().err
