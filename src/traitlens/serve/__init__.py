"""Serving: a steered model behind an OpenAI-compatible HTTP API, one trait mix per request.

Question it answers: *how do I use a trait vector in an application?* Point any
OpenAI client at ``traitlens serve`` and add ``"steering": {"traits": {"E": 1}}``
to the request body. Concurrent requests with different mixes share one decoding
batch; the steering hooks add a per-row vector, so one request never changes
another (:mod:`traitlens.serve.steering`). Needs the ``serve`` extra
(``pip install 'traitlens[serve]'``): FastAPI and uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traitlens.serve.engine import DecodeJob, Engine, decode_batch
from traitlens.serve.steering import AppliedSteering, SteeringCatalog

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "AppliedSteering",
    "DecodeJob",
    "Engine",
    "SteeringCatalog",
    "create_app",
    "decode_batch",
    "require_serve_extra",
]


def require_serve_extra() -> None:
    """Raise a clear error when FastAPI / uvicorn are missing (the core install stays lean)."""
    import importlib.util

    from traitlens.errors import ModelError

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(f"serving needs {' and '.join(missing)}: pip install 'traitlens[serve]'")


def create_app(*args: Any, **kwargs: Any) -> FastAPI:
    """See :func:`traitlens.serve.app.create_app` (imported lazily: it needs FastAPI)."""
    require_serve_extra()
    from traitlens.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
