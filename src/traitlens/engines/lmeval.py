"""lm-evaluation-harness: a steering file its ``steered`` model loads, and our own task.

``lm_eval --model steered --model_args pretrained=DIR,steer_path=FILE.pt`` adds,
at each hookpoint (a module name under ``model.base_model``), ``steering_vector ×
steering_coefficient`` to that module's output at every position. A decoder
block's output is traitlens' ``resid[l]``, so a trait mix exports as one
``layers.{l}`` entry per layer holding the mix's total addition there — the same
per-layer offsets :func:`traitlens.steer.bake.bake_offsets` folds into weights.

The file holds only tensors, strings, floats and ``None``: lm-eval 0.4.x opens
it with ``torch.load(weights_only=False)``, but nothing in it needs that —
``torch.load(path, weights_only=True)`` reads it (tested). A ``.pt`` file is still a
pickle: one you receive could hold code that lm-eval's loader would run, so check it
with :func:`check_steer_file` (``torch.load(weights_only=True)``, which refuses
anything but tensors and plain values) before handing it to ``lm_eval`` — traitlens
does so itself before every lm-eval run. The ``.safetensors`` twin and the JSON
sidecar written beside it carry the same vectors without pickle.

The task ``traitlens_mc`` (:func:`write_task`) is the project's own 200-item
multiple-choice set, read from a local JSONL file with the ``json`` dataset
builder, so ``lm_eval`` runs it offline (``HF_DATASETS_OFFLINE=1``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from traitlens.artifact_io import atomic_path, check_writable, write_json
from traitlens.errors import EngineError, InterventionError
from traitlens.models.loading import TraitModel

TASK_NAME = "traitlens_mc"
_INSTALL = "pip install 'lm-eval==0.4.13'  (or: pip install 'traitlens[lmeval]')"


def hookpoint_names(tm: TraitModel) -> dict[int, str]:
    """Layer → lm-eval hookpoint: the decoder block's name under ``model.base_model``."""
    base = tm.model.base_model
    names = {id(module): name for name, module in base.named_modules()}
    found: dict[int, str] = {}
    for layer in range(tm.identity.n_layers):
        block = tm.adapter.module(f"resid[{layer}]")
        if id(block) not in names:
            raise InterventionError(
                f"block {layer} of {tm.identity.name} is not under model.base_model, where "
                "lm-eval's steered model looks for hookpoints"
            )
        found[layer] = names[id(block)]
    return found


def export_steer(tm: TraitModel, interventions: Sequence[Any], path: str | Path) -> Path:
    """Write the mix as an lm-eval ``steer_path`` file (``.pt``) plus ``.safetensors``/``.json``.

    Only constant direction additions at every position are exportable (what lm-eval's
    ``add`` action does); the same checks as baking apply.
    """
    from safetensors.torch import save_file

    from traitlens.steer.bake import bake_offsets, mix_record

    out = Path(path)
    if out.suffix not in (".pt", ".pth"):
        raise InterventionError(
            f"lm-eval's steered model reads a .pt (or .pth) steering file; got {out.name}"
        )
    check_writable(out.parent)
    offsets = bake_offsets(tm, interventions)
    hooks = hookpoint_names(tm)
    tensors = {hooks[layer]: offsets[layer].to(torch.float32).contiguous() for layer in offsets}
    config = {
        hooks[layer]: {
            "steering_vector": tensors[hooks[layer]],
            "steering_coefficient": 1.0,
            "action": "add",
            "bias": None,
            "head_index": None,
        }
        for layer in sorted(offsets)
    }
    with atomic_path(out) as tmp:
        torch.save(config, tmp)
    with atomic_path(out.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp))
    write_json(
        out.with_suffix(".json"),
        {
            "format": "lm-eval steered (hookpoint → add steering_vector × coefficient)",
            "model": tm.identity.to_dict(),
            "hookpoints": list(config),
            "mix": mix_record(interventions),
        },
    )
    return out


def write_task(directory: str | Path, items_file: str | Path | None = None) -> Path:
    """Write the ``traitlens_mc`` task (YAML + data) into ``directory``; returns it.

    Pass the folder to ``lm_eval --include_path``. ``items_file`` (JSONL with the
    :class:`~traitlens.data.MCItem` fields) replaces the shipped items; it is
    validated first.
    """
    from traitlens.data import load_mc_items, shipped_file

    folder = Path(directory)
    check_writable(folder)
    items = load_mc_items(items_file)  # refuses a malformed file before anything is written
    data = folder / f"{TASK_NAME}.jsonl"
    if items_file is None:
        with shipped_file("capability_mc.jsonl").open("rb") as source, data.open("wb") as sink:
            shutil.copyfileobj(source, sink)
    else:
        data.write_text("".join(json.dumps(i.model_dump()) + "\n" for i in items))
    yaml = f"""# written by traitlens: {len(items)} multiple-choice items, our own text
task: {TASK_NAME}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data.resolve()))}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
    (folder / f"{TASK_NAME}.yaml").write_text(yaml)
    return folder


def require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as exc:
        raise EngineError(f"this needs lm-evaluation-harness; install it: {_INSTALL}") from exc
    return lm_eval


def check_steer_file(path: str | Path) -> Path:
    """Refuse a steering ``.pt`` that holds anything but tensors and plain values.

    lm-eval opens ``steer_path`` with ``torch.load(weights_only=False)``, which runs any
    pickled code in it; ``weights_only=True`` reads our files and refuses the rest."""
    source = Path(path)
    try:
        loaded = torch.load(source, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise EngineError(f"steering file {source} not found") from None
    except Exception as exc:  # UnpicklingError and friends: not a plain tensor file
        raise EngineError(
            f"{source} is not a plain steering file (torch.load(weights_only=True) refused "
            f"it: {str(exc).splitlines()[0][:200]}); lm-eval would unpickle it with code "
            "execution allowed — use a file written by `traitlens vectors lmeval`"
        ) from None
    if not isinstance(loaded, dict):
        raise EngineError(f"{source} does not hold a hookpoint → steering mapping")
    return source


def lm_eval_samples(
    tm: TraitModel, task_dir: Path, steer_path: Path | None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Run ``traitlens_mc`` through lm-eval itself on ``tm`` (already loaded), steered when
    ``steer_path`` is given; returns lm-eval's per-item samples."""
    lm_eval = require_lm_eval()
    from lm_eval.tasks import TaskManager

    if steer_path is None:
        from lm_eval.models.huggingface import HFLM

        model = HFLM(pretrained=tm.model, tokenizer=tm.tokenizer, batch_size=16)
    else:
        from lm_eval.models.hf_steered import SteeredModel

        check_steer_file(steer_path)  # lm-eval unpickles it with code execution allowed
        model = SteeredModel(
            pretrained=tm.model, tokenizer=tm.tokenizer, steer_path=str(steer_path), batch_size=16
        )
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=[TASK_NAME],
        task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=True,
        limit=limit,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
    )
    return list(results["samples"][TASK_NAME])
