"""Build llama.cpp from the source PyPI carries, and run it on a control vector.

Why build it ourselves: a GGUF control vector that has only been read back with
``gguf.GGUFReader`` proves the file parses, not that llama.cpp adds it where
traitlens does. The ``llama-cpp-python`` sdist vendors a pinned llama.cpp, so
the check needs nothing beyond PyPI, cmake and a C++ compiler.

The build lands in ``$TRAITLENS_CACHE/llama.cpp-<version>`` (default
``~/.cache/traitlens``) and is reused when its binaries are there; a build that
fails half-way leaves no directory that looks complete (it is built in a
temporary sibling and renamed at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlens.errors import EngineError
from traitlens.paths import cache_root

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
TARGETS = ("llama-completion", "llama-server", "llama-cvector-generator")
BUILD_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    # a fixed AVX2 baseline, not -march=native: a native build picked up the CPU's AMX
    # tiles, which this VM does not grant, and every matmul segfaulted
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
    "-DGGML_AVX512=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
)
"""Flags recorded with the build: a cache built with other flags is rebuilt."""


@dataclass(frozen=True)
class LlamaCpp:
    """A built llama.cpp: where its binaries are and which source made them."""

    root: Path
    version: str

    @property
    def completion(self) -> Path:
        return self.root / "bin" / "llama-completion"

    @property
    def server(self) -> Path:
        return self.root / "bin" / "llama-server"

    @property
    def cvector_generator(self) -> Path:
        return self.root / "bin" / "llama-cvector-generator"


def build_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return cache_root() / f"llama.cpp-{version}"


def cached(version: str = LLAMA_CPP_PYTHON_VERSION) -> LlamaCpp | None:
    """The cached build, or ``None`` when it is absent or incomplete."""
    root = build_dir(version)
    built = LlamaCpp(root, version)
    record = root / "traitlens-build.json"
    if not record.is_file() or not all((root / "bin" / name).is_file() for name in TARGETS):
        return None
    try:
        flags = json.loads(record.read_text()).get("flags")
    except json.JSONDecodeError:
        return None
    return built if flags == list(BUILD_FLAGS) else None


def _require_tools() -> None:
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise EngineError(
            f"building llama.cpp needs {' and '.join(missing)} on PATH; install them "
            "(Debian: apt-get install cmake g++) or point TRAITLENS_CACHE at a cache that "
            "already holds the build"
        )


def fetch_sdist(version: str, into: Path) -> Path:
    """The ``llama-cpp-python`` sdist: ``$TRAITLENS_LLAMACPP_SDIST`` or ``pip download``."""
    given = os.environ.get("TRAITLENS_LLAMACPP_SDIST")
    if given:
        path = Path(given)
        if not path.is_file():
            raise EngineError(f"TRAITLENS_LLAMACPP_SDIST={given} is not a file")
        return path
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(into),
        f"llama-cpp-python=={version}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(into.glob(f"llama_cpp_python-{version}.tar.gz"))
    if done.returncode != 0 or not found:
        raise EngineError(
            f"could not download the llama-cpp-python {version} sdist from PyPI:\n"
            f"{done.stderr.strip()[-800:]}\nDownload it elsewhere and set "
            "TRAITLENS_LLAMACPP_SDIST=/path/to/llama_cpp_python-<version>.tar.gz"
        )
    return found[0]


def _vendored_source(sdist: Path, into: Path) -> Path:
    """Extract only ``<pkg>/vendor/llama.cpp/`` (the sdist also carries git metadata)."""
    with tarfile.open(sdist) as archive:
        roots = sorted(
            (
                m.name[: -len("CMakeLists.txt")]
                for m in archive.getmembers()
                if m.name.endswith("/vendor/llama.cpp/CMakeLists.txt") and "/.git/" not in m.name
            ),
            key=len,
        )
        if not roots:
            raise EngineError(f"{sdist} does not vendor llama.cpp (no vendor/llama.cpp/)")
        members = [m for m in archive.getmembers() if m.name.startswith(roots[0])]
        archive.extractall(into, members=members, filter="data")
    return into / roots[0]


def build(
    version: str = LLAMA_CPP_PYTHON_VERSION, jobs: int | None = None, log: Any = None
) -> LlamaCpp:
    """The cached llama.cpp build, building it first when absent (minutes on 2 cores).

    One build at a time per cache: a second caller (a test while CI's background build
    runs) waits on a file lock and then finds the finished build."""
    found = cached(version)
    if found is not None:
        return found
    _require_tools()
    target = build_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        found = cached(version)
        if found is not None:
            return found
        return _build(version, target, jobs, log)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (released when the block ends or the
    process dies); where fcntl is missing, no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(version: str, target: Path, jobs: int | None, log: Any) -> LlamaCpp:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".llama.cpp-build-") as tmp:
        work = Path(tmp)
        sdist = fetch_sdist(version, work)
        source = _vendored_source(sdist, work / "src")
        binary = work / "build"
        configure = ["cmake", "-S", str(source), "-B", str(binary), *BUILD_FLAGS]
        compile_ = [
            "cmake",
            "--build",
            str(binary),
            "--config",
            "Release",
            "-j",
            str(jobs or os.cpu_count() or 2),
            "--target",
            *TARGETS,
        ]
        for step in (configure, compile_):
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if log is not None:
                log.write(done.stdout + done.stderr)
            if done.returncode != 0:
                raise EngineError(
                    f"llama.cpp build step failed ({' '.join(step[:3])} …):\n"
                    f"{(done.stdout + done.stderr).strip()[-1500:]}"
                )
        staged = work / "install"
        (staged / "bin").mkdir(parents=True)
        for name in TARGETS:
            shutil.copy2(binary / "bin" / name, staged / "bin" / name)
        (staged / "traitlens-build.json").write_text(
            json.dumps(
                {
                    "llama_cpp_python": version,
                    "sdist": sdist.name,
                    "seconds": round(time.perf_counter() - started, 1),
                    "targets": list(TARGETS),
                    "flags": list(BUILD_FLAGS),
                },
                indent=2,
            )
        )
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    built = cached(version)
    assert built is not None
    return built


# --------------------------------------------------------------------------- running


def scaled(path: Path, scale: float) -> str:
    """``--control-vector-scaled`` value: ``FNAME:SCALE`` (this llama.cpp; older ones took
    the two as separate arguments)."""
    return f"{path}:{scale:g}"


def _control_args(
    control: tuple[Path, float] | None, layer_range: tuple[int, int] | None
) -> list[str]:
    """The control-vector arguments ``llama-server`` and ``llama-completion`` share."""
    args: list[str] = []
    if control is not None:
        args += ["--control-vector-scaled", scaled(*control)]
    if layer_range is not None:
        args += ["--control-vector-layer-range", *map(str, layer_range)]
    return args


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """``llama-server`` on a loopback port, optionally with one scaled control vector.

    Used as a context manager; the process is killed on exit, even on error.
    """

    def __init__(
        self,
        built: LlamaCpp,
        model: Path,
        control: tuple[Path, float] | None = None,
        layer_range: tuple[int, int] | None = None,
        threads: int = 2,
    ) -> None:
        self.port = _free_port()
        self.command = [
            str(built.server),
            "-m",
            str(model),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            "-t",
            str(threads),
            "-c",
            "2048",
            "-np",
            "1",
            "--no-webui",
            "--seed",
            "0",
        ]
        self.command += _control_args(control, layer_range)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaServer:
        # its log goes to a file: a pipe nobody reads fills up and blocks the server
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")
                raise EngineError(f"llama-server exited at start-up:\n{err[-1500:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise EngineError("llama-server did not become healthy within 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.log.close()

    def complete(self, ids: list[int], n_predict: int, n_probs: int) -> dict[str, Any]:
        """Greedy ``/completion`` from token ids; raw-logit top-``n_probs`` log-probs per step."""
        body = json.dumps(
            {
                "prompt": ids,
                "n_predict": n_predict,
                "n_probs": n_probs,
                "temperature": 0.0,
                "top_k": 1,
                "cache_prompt": False,
                "return_tokens": True,
                "samplers": ["top_k"],
                "post_sampling_probs": False,
                "ignore_eos": True,
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/completion",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            return dict(json.loads(response.read()))


def complete_cli(
    built: LlamaCpp,
    model: Path,
    prompt: str,
    n_predict: int,
    control: tuple[Path, float] | None = None,
    layer_range: tuple[int, int] | None = None,
    threads: int = 2,
) -> str:
    """Greedy text from ``llama-completion`` (the CLI users run), prompt not echoed."""
    command = [
        str(built.completion),
        "-m",
        str(model),
        "-p",
        prompt,
        "-n",
        str(n_predict),
        "--temp",
        "0",
        "--top-k",
        "1",
        "-no-cnv",
        "--no-display-prompt",
        "--ignore-eos",
        "-t",
        str(threads),
        "-s",
        "0",
        "--no-warmup",
        "-c",
        "1024",
    ]
    command += _control_args(control, layer_range)
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        raise EngineError(f"llama-completion failed:\n{done.stderr.strip()[-1500:]}")
    return done.stdout


def generate_cvector(
    built: LlamaCpp,
    model: Path,
    positive: list[str],
    negative: list[str],
    out: Path,
    method: str = "mean",
    threads: int = 2,
) -> Path:
    """A control vector made by llama.cpp's own ``cvector-generator`` from prompt pairs.

    Its tensors are unit vectors. Note where they come from: the generator reads block
    ``il``'s output and names the result ``direction.{il + 1}``, which llama.cpp then
    *adds* at block ``il + 1`` — so a file it makes is applied one block after the
    block it was measured at. traitlens imports a file as llama.cpp applies it
    (``direction.N`` → ``resid[N]``), so steering with the import reproduces llama.cpp.
    """
    if len(positive) != len(negative) or not positive:
        raise EngineError("cvector-generator needs as many positive as negative prompts (>= 1)")
    if method not in ("mean", "pca"):
        raise EngineError(f"cvector-generator methods are mean and pca, not {method!r}")
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, prompts in (("positive", positive), ("negative", negative)):
            path = Path(tmp) / f"{name}.txt"
            # one prompt per line; the generator unescapes \\n itself
            path.write_text("".join(p.replace("\n", "\\n") + "\n" for p in prompts))
            files.append(path)
        command = [
            str(built.cvector_generator),
            "-m",
            str(model),
            "--positive-file",
            str(files[0]),
            "--negative-file",
            str(files[1]),
            "-o",
            str(out),
            "--method",
            method,
            "-t",
            str(threads),
            "-c",
            "1024",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0 or not out.is_file():
        raise EngineError(f"llama-cvector-generator failed:\n{done.stderr.strip()[-1500:]}")
    return out


if __name__ == "__main__":
    # CI starts this in the background before installing the project (stdlib only), so
    # the build overlaps the install, lint and model-free tests:
    #   PYTHONPATH=src python3 -m traitlens.engines.llamacpp
    clock = time.perf_counter()
    made = build(log=sys.stderr)
    print(f"llama.cpp {made.version} ready in {made.root} ({time.perf_counter() - clock:.0f} s)")
