"""Packaging: `pip install imgsound` is the core and the `imgsound` command, without Ray, boto3 or FastAPI; the
`serve` and `jobs` extras add what serve/ and jobs/ import, and `test` (what `make install` installs) adds both.

Three levels: the declared requirements (pyproject.toml, and every import of serve/ and jobs/ against them), the
CLI run in a process where the extras' libraries cannot be imported, and (slow) a real install of the core alone
into a fresh virtualenv that then writes tiny models and generates a sample.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import pickle
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
NAME = canonicalize_name(PROJECT["name"])

# Distributions only the extras may bring: the adapters' libraries and the test tools.
EXTRAS_ONLY = {
    "ray",
    "boto3",
    "botocore",
    "fastapi",
    "starlette",
    "uvicorn",
    "prometheus-client",
    "pyarrow",
    "pydantic",
    "moto",
    "pandas",
    "datasets",
    "playwright",
    "pytest",
}
# Top-level modules the core and its command must run without (the project's own adapters included).
NOT_FOR_THE_CORE = (
    "ray",
    "boto3",
    "botocore",
    "fastapi",
    "starlette",
    "uvicorn",
    "pyarrow",
    "prometheus_client",
    "pydantic",
    "serve",
    "jobs",
)
# Imported directly, installed by a declared requirement: botocore's config and exceptions are boto3's API.
COMES_WITH = {"botocore": "boto3"}
PROJECT_PACKAGES = ("imgsound_core", "serve", "jobs")


# --- the declared requirements ----------------------------------------------------------------------------------------


def requirements(extra: str | None = None) -> list[Requirement]:
    """The core's requirements (`extra` None) or one extra's, as written."""
    raw = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return [Requirement(line) for line in raw]


def expanded(extra: str, seen: frozenset[str] = frozenset()) -> dict[str, Requirement]:
    """Normalized name → requirement of an extra, with the project's own extras it names (`imgsound[serve,jobs]`)
    expanded."""
    assert extra not in seen, f"extras include each other in a cycle: {sorted(seen)}"
    out: dict[str, Requirement] = {}
    for req in requirements(extra):
        if canonicalize_name(req.name) == NAME:
            for inner in sorted(req.extras):
                for name, inner_req in expanded(inner, seen | {extra}).items():
                    out.setdefault(name, inner_req)
        else:
            out.setdefault(canonicalize_name(req.name), req)
    return out


def core_names() -> set[str]:
    return {canonicalize_name(req.name) for req in requirements()}


def test_the_core_requires_no_service_library() -> None:
    assert core_names() & EXTRAS_ONLY == set()
    assert all(req.marker is None for req in requirements()), "the core's requirements hold for every install"


def test_the_extras_bring_ray_s3_and_http() -> None:
    serve, jobs = expanded("serve"), expanded("jobs")
    assert "serve" in serve["ray"].extras
    assert {"fastapi", "pydantic", "prometheus-client"} <= serve.keys()
    # The service reads and writes output stores through jobs.store and jobs.gallery.
    assert {"pyarrow", "boto3"} <= serve.keys()
    assert {"ray", "boto3", "pyarrow", "pydantic", "pyyaml"} <= jobs.keys()
    assert "default" in jobs["ray"].extras  # `ray start --head` with the job server for `ray job submit`


def test_make_install_installs_every_extra() -> None:
    """`make install` installs `.[test]`, which holds the serve and jobs extras and the test tools."""
    install = (ROOT / "Makefile").read_text(encoding="utf-8").split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "-e '.[test]'" in install, install
    everything = expanded("test")
    for extra in PROJECT["optional-dependencies"]:
        assert expanded(extra).keys() <= everything.keys(), extra
    assert {"pytest", "moto", "datasets"} <= everything.keys()


def test_every_extra_requirement_has_a_floor() -> None:
    for extra in PROJECT["optional-dependencies"]:
        for req in requirements(extra):
            if canonicalize_name(req.name) != NAME:
                assert any(spec.operator in (">=", "==", "~=") for spec in req.specifier), (extra, str(req))


def test_the_ray_floors() -> None:
    """serve/modality.py batches with `@serve.batch(..., batch_size_fn=...)`, new in Ray 2.53.0; the jobs' clusters
    use Ray's token authentication (RAY_AUTH_MODE=token), new in 2.52.0."""
    serve_ray, jobs_ray = expanded("serve")["ray"].specifier, expanded("jobs")["ray"].specifier
    assert not serve_ray.contains("2.52.1") and serve_ray.contains("2.53.0")
    assert not jobs_ray.contains("2.51.2") and jobs_ray.contains("2.52.0")


# --- every import of serve/ and jobs/ is declared ---------------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    """Dotted names `path` imports (module level or inside functions); for `from a import b`, `a` and `a.b`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path}: relative import"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_file(name: str) -> Path | None:
    """The file of a project module (serve.x, jobs.x), or None for anything else."""
    if name.split(".")[0] not in ("serve", "jobs"):
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(package: str) -> dict[str, set[str]]:
    """Top-level third-party module → the files importing it, over `package` and every serve/jobs module it
    reaches (imgsound_core's own requirements are the core's)."""
    todo = list((ROOT / package).rglob("*.py"))
    seen: set[Path] = set()
    found: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in PROJECT_PACKAGES:
                target = module_file(name)
                if target is not None:
                    todo.append(target)
            elif top not in sys.stdlib_module_names:
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("extra", ["serve", "jobs"])
def test_the_extra_declares_what_its_package_imports(extra: str) -> None:
    declared = core_names() | expanded(extra).keys()
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module, files in third_party_imports(extra).items():
        dists = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not dists & declared and COMES_WITH.get(module) not in declared:
            missing[module] = sorted(files)
    assert missing == {}, f"imported by {extra}/ but not required by imgsound[{extra}]"


# --- the command without the extras' libraries ------------------------------------------------------------------------

# The start of a script for a fresh interpreter: wraps every meta-path finder so that the modules named in argv[1]
# are not found (as if not installed; `importlib.util.find_spec` answers None for them, so optional-dependency probes
# see them as absent), and records in `asked` which of them were asked for.
BLOCKER = r"""
import json
import sys

BLOCKED = frozenset(json.loads(sys.argv[1]))
asked = set()


class NotInstalled:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            asked.add(name)
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):  # find_distributions (importlib.metadata), invalidate_caches, ...
        return getattr(self.finder, name)


sys.meta_path[:] = [NotInstalled(finder) for finder in sys.meta_path]
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"the blocker let {name} through")
asked.clear()
"""
# Calls `imgsound_core.cli.main` with each argument list and reports which blocked modules were loaded.
NO_EXTRAS_SCRIPT = (
    BLOCKER
    + r"""
from imgsound_core.cli import main

for args in json.loads(sys.argv[2]):
    code = main(args)
    if code != 0:
        raise SystemExit(f"imgsound {' '.join(args)} exited with {code}")
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
print("RESULT " + json.dumps({"loaded": loaded, "asked": sorted(asked)}))
"""
)


def clean_env(**updates: str) -> dict[str, str]:
    """This environment without what would point Python or imgsound elsewhere."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("IMGSOUND_") and key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env.update(HF_HUB_OFFLINE="1", **updates)
    return env


def generate_args(models: Path, out: Path) -> list[str]:
    return [
        "generate",
        "--image-model",
        str(models / "image"),
        "--audio-model",
        str(models / "audio"),
        "--image-prompt",
        "castle towers",
        "--audio-prompt",
        "bell ringing",
        "--steps",
        "2",
        "--image-start-step",
        "1",
        "--height",
        "64",
        "--width",
        "64",
        "--out",
        str(out),
    ]


def assert_one_sample(out: Path) -> None:
    folder = out / "sample_000"
    names = {p.name for p in folder.iterdir()}
    assert {"image.png", "spectrogram.png", "spectrogram.npy", "audio.wav", "sample.json"} <= names, names
    assert all((folder / name).stat().st_size > 0 for name in names)


def test_the_command_runs_without_the_extras_libraries(tmp_path: Path) -> None:
    """tiny-models, generate and gallery in a process that cannot import Ray, boto3, FastAPI, pyarrow, pydantic,
    prometheus_client or the serve/jobs packages."""
    models, out, gallery = tmp_path / "models", tmp_path / "out", tmp_path / "gallery"
    commands = [["tiny-models", str(models)], generate_args(models, out), ["gallery", str(out), "--out", str(gallery)]]
    done = subprocess.run(
        [sys.executable, "-c", NO_EXTRAS_SCRIPT, json.dumps(NOT_FOR_THE_CORE), json.dumps(commands)],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
    assert result["loaded"] == []
    assert_one_sample(out)
    assert (gallery / "index.html").is_file()


# --- a sweep's driver without the model libraries ---------------------------------------------------------------------

# The driver validates the spec, identifies the models from their files, plans and runs the pipeline; the models run
# in the pipeline's actors. Without torch its start-up, on the way to the first batch, takes 1.1 s less CPU.
# Only a model folder this machine has never fingerprinted is read with torch (its tensors), once.
MODEL_LIBRARIES = ["torch", "torchvision", "diffusers", "transformers"]


def run_blocked(script: str, args: list[str], cwd: Path, **env: str) -> tuple[dict, str]:
    """Run a BLOCKER `script` with `args` from this checkout; the object its `RESULT ` line prints, and its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        env={**clean_env(**env), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "RESULT " in done.stdout, done.stderr[-5000:]
    return json.loads(done.stdout.rsplit("RESULT ", 1)[1]), done.stderr


DRIVER_SCRIPT = (
    BLOCKER
    + r"""
import jobs.manifest, jobs.pipeline, jobs.score, jobs.sweep  # everything the driver runs after planning, too

code = jobs.sweep.main(sys.argv[2:])
print("RESULT " + json.dumps({"code": code, "asked": sorted(asked)}))
"""
)


def test_a_sweeps_driver_plans_without_the_model_libraries(tiny_models: Path, tmp_path: Path) -> None:
    from imgsound_core.identity import identify_source

    cache = {"IMGSOUND_CACHE_DIR": str(tmp_path / "cache")}
    with pytest.MonkeyPatch.context() as patch:  # fingerprinted once, as any earlier run on the machine does
        patch.setenv("IMGSOUND_CACHE_DIR", cache["IMGSOUND_CACHE_DIR"])
        for role in ("image", "audio"):
            identify_source(tiny_models / role, role)
    assert (tmp_path / "cache" / "fingerprints.json").is_file()
    spec = {
        "name": "driver",
        "pairs": [{"image": "castle towers", "audio": "bell ringing"}],
        "samples_per_pair": 3,
        "params": {"steps": 2, "height": 64, "width": 256},
        "models": {"image": str(tiny_models / "image"), "audio": str(tiny_models / "audio"), "device": "cpu"},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    command = [json.dumps(MODEL_LIBRARIES), "spec.json", "--output", str(tmp_path / "out"), "--dry-run"]
    result, stderr = run_blocked(DRIVER_SCRIPT, command, tmp_path, **cache)
    assert result == {"code": 0, "asked": []}, stderr[-3000:]
    assert "3 grid points, 0 already done, 3 to generate" in stderr


WRITER_SCRIPT = (
    BLOCKER
    + r"""
import pickle
from pathlib import Path

import numpy as np

from jobs.pipeline import WriteSamples

spec = json.loads(Path("spec.json").read_text())
stage = WriteSamples(spec, sys.argv[2], None, False)
written = stage({"generated": np.array([Path("batch.pickle").read_bytes()], dtype=object)})
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
print("RESULT " + json.dumps({"parts": [str(p) for p in written["part"]], "loaded": loaded, "asked": sorted(asked)}))
"""
)


def test_a_sweeps_writer_stores_a_batch_without_the_model_libraries(tiny_models: Path, tmp_path: Path) -> None:
    """The write stage unpickles a real generated batch (arrays, no tensors) and writes every file, with the crop and
    the video, in a process where torch and the model libraries cannot be imported; the files are the very bytes a
    writer with torch loaded writes."""
    from jobs.spec import SweepSpec
    from jobs.store import LocalStore
    from jobs.sweep import plan, point_payload
    from jobs.worker import SweepWorker
    from jobs.writer import SampleWriter

    spec = SweepSpec.model_validate(
        {
            "name": "writer",
            "pairs": [{"image": "castle towers", "audio": "bell ringing"}],
            "samples_per_pair": 2,
            "params": {"steps": 2, "height": 64, "width": 256},
            "models": {"image": str(tiny_models / "image"), "audio": str(tiny_models / "audio"), "device": "cpu"},
            "crop": True,
            "video": True,
        }
    )
    _, batches = plan(spec, LocalStore(tmp_path / "planned"))
    batch = SweepWorker(spec.model_dump()).generate([point_payload(p) for p in batches[0]])
    (tmp_path / "batch.pickle").write_bytes(pickle.dumps(batch, protocol=5))
    (tmp_path / "spec.json").write_text(json.dumps(spec.model_dump()))
    result, _ = run_blocked(WRITER_SCRIPT, [json.dumps(MODEL_LIBRARIES), str(tmp_path / "lean")], tmp_path)
    assert result["loaded"] == [] and result["asked"] == [], result
    assert len(result["parts"]) == 1 and (tmp_path / "lean" / result["parts"][0]).is_file()

    SampleWriter(spec.model_dump(), str(tmp_path / "with-torch")).write(batch)
    for sample in batch.samples:
        folder = f"samples/{sample.record['sample_id']}"
        names = sorted(p.name for p in (tmp_path / "lean" / folder).iterdir())
        assert names == ["audio.wav", "image.png", "sample.json", "spectrogram.npy", "spectrogram.png", "video.mp4"]
        assert (tmp_path / "lean" / folder / "video.mp4").stat().st_size > 0
        for name in names:
            if name != "video.mp4":  # ffmpeg's container is not promised byte-stable across runs
                lean, usual = (tmp_path / root / folder / name for root in ("lean", "with-torch"))
                assert lean.read_bytes() == usual.read_bytes(), name
        assert json.loads((tmp_path / "lean" / folder / "sample.json").read_text())["crop_columns"] == 32


# --- a real install of the core alone ---------------------------------------------------------------------------------


def copy_project(target: Path) -> Path:
    """What `pip install` builds from (pyproject.toml, the readme, the packages), copied, so that the build writes
    no build/ or egg-info into the checkout and no stale build/lib file can reach the wheel."""
    target.mkdir()
    for name in ("pyproject.toml", PROJECT["readme"]):
        shutil.copy2(ROOT / name, target / name)
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def run(command: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


@pytest.mark.slow
@pytest.mark.heavy
def test_the_core_installs_and_generates_without_ray(tmp_path: Path) -> None:
    """`pip install imgsound` (no extras) into a fresh virtualenv: Ray, boto3 and FastAPI are not there, and the
    installed `imgsound` writes tiny models and generates a sample."""
    source = copy_project(tmp_path / "imgsound")
    venv = tmp_path / "venv"
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv], tmp_path, timeout=300)
    python, imgsound = venv / "bin" / "python", venv / "bin" / "imgsound"
    run([python, "-m", "pip", "install", "--quiet", "-c", ROOT / "constraints.txt", source], tmp_path, timeout=1800)
    run([python, "-m", "pip", "check"], tmp_path, timeout=120)

    probe = (
        "import importlib, json, imgsound_core\n"
        "absent = []\n"
        "for name in ('ray', 'boto3', 'botocore', 'fastapi', 'starlette', 'uvicorn'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        absent.append(name)\n"
        "print(json.dumps({'absent': absent, 'core': imgsound_core.__file__}))\n"
    )
    found = json.loads(run([python, "-c", probe], tmp_path, timeout=120).stdout)
    assert found["absent"] == ["ray", "boto3", "botocore", "fastapi", "starlette", "uvicorn"]
    assert Path(found["core"]).is_relative_to(venv), found["core"]  # the installed copy, not the checkout

    models, out = tmp_path / "models", tmp_path / "out"
    run([imgsound, "tiny-models", models], tmp_path, timeout=600)
    run([imgsound, *generate_args(models, out)], tmp_path, timeout=600)
    assert_one_sample(out)
