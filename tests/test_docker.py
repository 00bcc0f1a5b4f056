"""The container files in docker/, checked without Docker: the compose file's services,
commands (parsed by the real command lines) and volumes; the Dockerfiles install the
project with the Makefile's own install target, the one CI runs; their build-context
filters keep the sources; and docker/dask.yaml takes MALLOC_TRIM_THRESHOLD_ out of the
environment of real Dask worker processes."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import kill_group

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
DASK_YAML = DOCKER / "dask.yaml"

yaml = pytest.importorskip("yaml")  # PyYAML: a dependency of dask

# --------------------------------------------------------------------------- helpers


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` interpolation, with ``env`` (default:
    no variable set)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, text)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return yaml.safe_load(interpolate((DOCKER / "compose.yaml").read_text(), env))


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def volumes(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target -> (source, mode) of a service's short-syntax volumes."""
    out = {}
    for v in service.get("volumes", []):
        source, target, *mode = v.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments and
    parser directives left out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        keyword, _, args = " ".join(pending.split()).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{dockerfile}: dangling continuation"
    return out


def make_recipe(target: str) -> list[str]:
    """The recipe lines of a Makefile target, variables unexpanded."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


# --------------------------------------------------------------------------- compose


def test_compose_services_and_volumes() -> None:
    services = compose()["services"]
    assert {"scheduler", "worker", "build"} <= set(services)
    scheduler, worker, build = services["scheduler"], services["worker"], services["build"]

    # One CPU image, built from the repository root, for the cluster and the build.
    for s in (scheduler, worker, build):
        assert s["image"] == "featurestore"
        assert s["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert (DOCKER / s["build"]["context"] / s["build"]["dockerfile"]).is_file()

    assert worker["deploy"]["replicas"] == 2  # ${N_WORKERS:-2}
    assert compose({"N_WORKERS": "5"})["services"]["worker"]["deploy"]["replicas"] == 5
    assert worker["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert set(build["depends_on"]) == {"scheduler", "worker"}
    assert "healthcheck" in scheduler

    # The sources at the same path, read-only, wherever a clip is decoded; the stores
    # folder only where the store is written; Dask's nanny settings on the workers.
    w, b = volumes(worker), volumes(build)
    assert w["/data"] == b["/data"] == ("../data", "ro")
    assert b["/stores"] == ("../stores", "rw")
    assert "/stores" not in w
    assert w["/etc/dask/dask.yaml"] == ("./dask.yaml", "ro")
    assert (DOCKER / w["/etc/dask/dask.yaml"][0]).resolve() == DASK_YAML
    custom = compose({"DATA_DIR": "/srv/gtzan", "STORES_DIR": "/srv/stores"})["services"]
    assert volumes(custom["worker"])["/data"] == ("/srv/gtzan", "ro")
    assert volumes(custom["build"])["/stores"] == ("/srv/stores", "rw")


def test_compose_commands_parse() -> None:
    """Each service's command, as the real command line parses it."""
    from distributed.cli import dask_scheduler, dask_worker

    from featurestore.cli import main as featurestore_main
    from trainer.cli import main as trainer_main

    services = compose({"BUILD_ARGS": "--targets mfcc,chroma --layout gtzan",
                        "PRETRAIN_ARGS": "--steps 100"})["services"]

    args = argv(services["scheduler"]["command"])
    assert args[:2] == ["dask", "scheduler"]
    ctx = dask_scheduler.main.make_context("dask scheduler", args[2:])
    assert (ctx.params["host"], ctx.params["port"]) == ("0.0.0.0", "8786")

    args = argv(services["worker"]["command"])
    assert args[:2] == ["dask", "worker"]
    ctx = dask_worker.main.make_context("dask worker", args[2:])
    assert ctx.params["scheduler"] == "tcp://scheduler:8786"
    assert ctx.params["nthreads"] == 1 and ctx.params["n_workers"] == "2"
    assert ctx.params["memory_limit"] == "4GiB"

    args = argv(services["build"]["command"])
    assert args[:2] == ["featurestore", "build"]
    ctx = featurestore_main.commands["build"].make_context("featurestore build", args[2:])
    assert ctx.params["source"] == "/data"
    assert ctx.params["output"] == "/stores/store.h5"
    assert ctx.params["scheduler"] == "tcp://scheduler:8786"
    assert (ctx.params["targets"], ctx.params["layout"]) == ("mfcc,chroma", "gtzan")
    assert compose({"STORE": "gtzan.h5"})["services"]["build"]["command"].split()[4] \
        == "/stores/gtzan.h5"

    pretrain = services["pretrain"]
    assert pretrain["profiles"] == ["gpu"]
    assert pretrain["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert pretrain["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    args = argv(pretrain["command"])
    assert args[:2] == ["trainer", "pretrain"]
    ctx = trainer_main.commands["pretrain"].make_context("trainer pretrain", args[2:])
    assert ctx.params["store"] == "/stores/store.h5" and ctx.params["steps"] == 100
    assert volumes(pretrain)["/stores"] == ("../stores", "ro")


# --------------------------------------------------------------------------- images


def test_ci_installs_what_make_install_installs() -> None:
    """CI runs `make test`, whose install-test is `make install` plus the test extras: so
    an image that runs `make install` installs what CI installs and tests."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    install, install_test = make_recipe("install"), make_recipe("install-test")
    assert install and install_test == [
        line.replace("-e .", '-e ".[test]"') for line in install]
    # Torch is installed only when none is: the CUDA image's torch survives `make install`.
    assert re.fullmatch(r'\$\(PYTHON\) -c "import torch" 2>/dev/null \|\| \$\(PIP\) install '
                        r'-q "\$\(TORCH\)"', install[0])
    assert sum("torch" in line for line in install) == 1


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_with_make_install(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    keywords = [k for k, _ in steps]
    assert keywords[0] == "FROM" and steps[0][1].startswith("python:3.11-slim")
    assert "ENTRYPOINT" not in keywords

    # The repository is copied to /app and installed there by `make install`, once.
    copy = steps.index(("COPY", ". /app"))
    assert ("WORKDIR", "/app") in steps[:copy]
    runs = [(i, args) for i, (k, args) in enumerate(steps) if k == "RUN"]
    installs = [(i, args) for i, args in runs if re.search(r"\bmake install\b", args)]
    assert len(installs) == 1
    at, install = installs[0]
    assert at > copy
    assert not any(k == "WORKDIR" for k, _ in steps[copy:at])
    assert re.search(r"(^|&& )(PIP_EXTRA_INDEX_URL=\S+ )?make install$",
                     re.sub(r"^--mount=\S+ ", "", install))
    # Apart from torch in the CUDA image, pip installs nothing the Makefile does not.
    pip = [args for _, args in runs if re.search(r"\bpip install\b", args)]
    if dockerfile.name == "Dockerfile":
        assert pip == []
        assert "PIP_EXTRA_INDEX_URL" in install  # the CPU torch wheel
    else:
        assert pip == [install]
        # torch first, the Makefile's pinned requirement, from the Makefile itself
        assert install.index("pip install") < install.index("make install")
        assert "print-torch: ; @echo $(TORCH)" in install

    # make is the one system package; the Dask config; a non-root user at the end.
    apt = [args for _, args in runs if "apt-get install" in args]
    assert len(apt) == 1
    assert apt[0].split("apt-get install")[1].split("&&")[0].split() == [
        "-y", "--no-install-recommends", "make"]
    assert ("COPY", "docker/dask.yaml /etc/dask/dask.yaml") in steps
    user = [args for k, args in steps if k == "USER"]
    assert user and user[-1] not in ("root", "0", "0:0")
    assert keywords.index("USER") > at


def test_make_prints_the_torch_requirement() -> None:
    """The CUDA image reads the torch requirement from the Makefile with this command."""
    install = next(args for k, args in instructions(DOCKER / "Dockerfile.cuda")
                   if k == "RUN" and "make install" in args)
    cmd = re.search(r'"\$\((make [^)]*\)[^)]*)\)"', install)
    assert cmd, install
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH", "MAKEFLAGS")}
    out = subprocess.run(shlex.split(cmd.group(1)), cwd=ROOT, capture_output=True, text=True,
                         env=env, check=True).stdout.strip()
    expected = re.search(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert expected and out == expected.group(1)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_keeps_the_sources(dockerfile: Path) -> None:
    """The build context filter beside each Dockerfile drops data and outputs, not what
    `make install` and the image need."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = [p.strip() for p in ignore.read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for p in patterns:
            p = p.removeprefix("**/")
            if any(fnmatch.fnmatchcase(x, p) for x in prefixes + parts[-1:]):
                return True
        return False

    for needed in ["Makefile", "pyproject.toml", "README.md", "featurestore/__init__.py",
                   "featurestore/cli.py", "trainer/__init__.py", "docker/dask.yaml"]:
        assert (ROOT / needed).exists() and not ignored(needed), needed
    data_files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "featurestore").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts]
    assert data_files and not any(ignored(p) for p in data_files)
    for dropped in [".git", "data/x.wav", "stores/a.h5", "runs/r", "featurestore.egg-info"]:
        assert ignored(dropped), dropped


def test_readme_documents_the_commands() -> None:
    text = (DOCKER / "README.md").read_text()
    for s in ["docker build -f docker/Dockerfile -t featurestore .",
              "docker build -f docker/Dockerfile.cuda -t featurestore:cuda .",
              "--gpus all", "docker compose -f docker/compose.yaml up", "--scale worker=",
              "--scheduler tcp://scheduler:8786", "MALLOC_TRIM_THRESHOLD_",
              "MALLOC_MMAP_MAX_"]:
        assert s in text, s


# --------------------------------------------------------------------------- dask.yaml


def _dask_config_in_child(path: Path) -> dict[str, Any]:
    code = ("import json, dask.config, distributed; "
            "print(json.dumps(dask.config.get('distributed.nanny.pre-spawn-environ')))")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    env["DASK_CONFIG"] = str(path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def test_dask_yaml_sets_featurestores_allocator_settings() -> None:
    """Loaded with dask.config on top of distributed's defaults, the file gives the nanny's
    pre-spawn environment featurestore's allocator settings (replacing Dask's
    MALLOC_TRIM_THRESHOLD_=65536) and one thread per process."""
    from featurestore.build import WORKER_ENVIRON

    environ = _dask_config_in_child(DASK_YAML)
    assert {k: str(environ.get(k)) for k in WORKER_ENVIRON} == WORKER_ENVIRON
    assert {k: environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                        "OPENBLAS_NUM_THREADS")} == dict.fromkeys(
        ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), 1)


def test_worker_started_with_dask_yaml_has_the_allocator_settings(tmp_path: Path) -> None:
    """A real `dask worker` (nanny and worker process) started with docker/dask.yaml, as in
    the image, has featurestore's allocator settings and one OpenMP thread."""
    import distributed

    from featurestore.build import WORKER_ENVIRON

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    env["DASK_CONFIG"] = str(DASK_YAML)
    scheduler_file = tmp_path / "scheduler.json"
    procs = []

    def start(args: list[str], name: str) -> subprocess.Popen[Any]:
        log = open(tmp_path / f"{name}.log", "wb")
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        procs.append(proc)
        return proc

    try:
        scheduler = start(["dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                           "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                          "scheduler")
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert scheduler.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "scheduler.log").read_text())
            time.sleep(0.05)
        time.sleep(0.1)
        start(["dask", "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
               "--nworkers", "1", "--no-dashboard", "--local-directory",
               str(tmp_path / "space")], "worker")
        address = json.loads(scheduler_file.read_text())["address"]
        with distributed.Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=90)
            for name, value in WORKER_ENVIRON.items():
                assert set(client.run(os.getenv, name, "unset").values()) == {value}
            assert set(client.run(os.getenv, "OMP_NUM_THREADS", "unset").values()) == {"1"}
    finally:
        for proc in reversed(procs):
            kill_group(proc, signal.SIGTERM)
