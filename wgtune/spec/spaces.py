"""Search spaces: YAML files of hyperopt distributions, validated, narrowed and encoded for TPE.

`search_spaces/base.yaml` holds the trial-config hyperparameters every objective shares, and
`<objective>.yaml` that objective's own (ERM has none, so no file). A plain scalar is fixed; a
one-key mapping such as ``{loguniform: [1.0e-4, 0.3]}`` is searched; bounds are in real space.

Which keys an objective takes is declared by `trainables.objectives.OBJECTIVES[name].defaults`.
`load_space` reads that lazily, which imports torch; to stay torch-free, pass `objective_defaults`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import math
import numbers
import re
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from wgtune.spec.errors import UserError

__all__ = ["Dimension", "SearchSpace", "SpaceError", "load_space", "space_files"]

# Trial-config fields that base.yaml or a grid override may set: a type, or the allowed values.
_BASE_KEYS: dict[str, Any] = {
    "lr": float, "weight_decay": float, "batch_size": int, "optimizer": ("sgd", "adamw"),
    "momentum": float, "schedule": ("cosine", "step", "constant"), "epochs": int,
    "sampler": str, "augment": str,
}
# Keys whose values are names in a trainables registry: checked when a space sets them (the
# registries import torch, which a space without them never pays).
_REGISTERED = {"sampler": ("trainables.sampling", "SAMPLERS"), "augment": ("trainables.augment", "AUGMENTATIONS")}
_ARITY: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"), "loguniform": ("low", "high"), "quniform": ("low", "high", "q"),
    "qloguniform": ("low", "high", "q"), "normal": ("mu", "sigma"), "choice": ("options...",),
}
LOG_KINDS = ("loguniform", "qloguniform")
QUANTIZED_KINDS = ("quniform", "qloguniform")
_TOL = 1e-9  # relative: hyperopt's log-scale values are exp(log(x)), an ulp or so off the bounds


class SpaceError(UserError, ValueError):
    """An invalid search space, or a value outside one; the message names the file (or source) and key.

    A `UserError`, so the CLI prints it as one message rather than a traceback.
    """


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter: a distribution (or a fixed value) and where it goes in the trial config."""

    name: str
    kind: str  # 'uniform'|'loguniform'|'quniform'|'qloguniform'|'normal'|'choice'|'fixed'
    args: tuple  # as written in YAML (real-space bounds); ``(value,)`` for 'fixed'
    target: str  # 'config' or 'objective_options'
    source: str  # "path/to/file.yaml:line" or the override source, for messages

    @property
    def integer(self) -> bool:
        """True for quantized dimensions with integer bounds and q: they yield Python ints."""
        return self.kind in QUANTIZED_KINDS and all(isinstance(a, numbers.Integral) for a in self.args)


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of dimensions: base first, then the objective's, then overrides."""

    dims: tuple[Dimension, ...]

    def __post_init__(self) -> None:
        names = [d.name for d in self.dims]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SpaceError(f"hyperparameters defined twice: {', '.join(twice)}")

    def searched(self) -> tuple[Dimension, ...]:
        """The dimensions TPE searches (all but the fixed ones)."""
        return tuple(d for d in self.dims if d.kind != "fixed")

    def searched_keys(self) -> frozenset[str]:
        """The searched dims as keys of a flattened trial config (objective options as `objective_options.<name>`)."""
        return frozenset(d.name if d.target == "config" else f"{d.target}.{d.name}" for d in self.searched())

    def fixed(self) -> dict[str, Any]:
        """Fixed hyperparameters, name -> value."""
        return {d.name: d.args[0] for d in self.dims if d.kind == "fixed"}

    def to_hyperopt(self) -> dict[str, Any]:
        """``{name: hp.<dist>(name, ...)}`` for the searched dimensions; hyperopt labels are the names."""
        from hyperopt import hp  # hyperopt pulls in scipy.stats (~1 s): paid only when searching
        from hyperopt.pyll import scope

        space: dict[str, Any] = {}
        for d in self.searched():
            if d.kind == "choice":
                expr = hp.choice(d.name, list(d.args))
            else:  # hp.<kind>(label, a, b[, q]); hyperopt takes log-scale bounds as logs
                a, b = (math.log(d.args[0]), math.log(d.args[1])) if d.kind in LOG_KINDS else d.args[:2]
                expr = getattr(hp, d.kind)(d.name, a, b, *d.args[2:])
            # scope.int changes only what the objective receives; misc.vals keep hyperopt's float.
            space[d.name] = scope.int(expr) if d.integer else expr
        return space

    def to_config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Trial-config updates: `params` plus the fixed values; objective dims under "objective_options".

        "objective_options" is left out when the space has none, and must be merged into (not
        replace) the options a config already holds.
        """
        reason = self._keys_reason(params)
        if reason:
            raise SpaceError(reason)
        config: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for d in self.dims:
            value = d.args[0] if d.kind == "fixed" else _as_dimension_type(d, params[d.name])
            (options if d.target == "objective_options" else config)[d.name] = value
        if options:
            config["objective_options"] = options
        return config

    def encode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Plain values -> hyperopt's encoding ``{label: value}``: a choice as its index, others the value.

        ``{label: [value]}`` of it is exactly a trial's ``misc.vals`` as `fmin` stores it (labels
        sorted; values in real space, quantized as hyperopt rounds; Python int/float where hyperopt
        has np.int64/np.float64, which TPE reads alike), so an injected observation cannot be told
        from one TPE suggested. Indices are this space's: encode with the space the searcher runs on.
        """
        reason = self.contains(params)
        if reason:
            raise SpaceError(f"cannot encode: {reason}")
        vals: dict[str, Any] = {}
        for d in sorted(self.searched(), key=lambda d: d.name):
            value = params[d.name]
            if d.kind == "choice":
                vals[d.name] = next(i for i, o in enumerate(d.args) if _same(o, value))
            else:
                vals[d.name] = float(round(value / d.args[2]) * d.args[2] if d.kind in QUANTIZED_KINDS else value)
        return vals

    def decode(self, vals: Mapping[str, Any]) -> dict[str, Any]:
        """Inverse of `encode`: ``{label: v}``, or a trial's ``misc.vals`` ``{label: [v]}`` -> plain values."""
        searched = {d.name: d for d in self.searched()}
        if set(vals) != set(searched):
            raise SpaceError(f"cannot decode: vals hold labels {sorted(vals)}, the space searches {sorted(searched)}")
        params: dict[str, Any] = {}
        for name, d in searched.items():
            raw = vals[name]
            if isinstance(raw, (list, tuple)):  # [] would be an inactive conditional branch: we have none
                if len(raw) != 1:
                    raise SpaceError(f"cannot decode {name!r}: expected one value, got {list(raw)!r}")
                raw = raw[0]
            if d.kind == "choice" and not 0 <= int(raw) < len(d.args):
                raise SpaceError(f"cannot decode {name!r}: index {int(raw)} outside 0..{len(d.args) - 1}")
            params[name] = d.args[int(raw)] if d.kind == "choice" else _as_dimension_type(d, raw)
        return params

    def contains(self, params: Mapping[str, Any]) -> str | None:
        """None if `params` (every searched dim; fixed ones optional) lies in the space, else the reason."""
        by_name = {d.name: d for d in self.dims}
        reasons = (_dim_reason(by_name[k], v) for k, v in params.items())
        return self._keys_reason(params) or next((r for r in reasons if r), None)

    def narrow(self, points: Sequence[Mapping[str, Any]], margin: float = 0.1,
               keep: Sequence[Mapping[str, Any]] = ()) -> SearchSpace:
        """The bounding box of `points`, widened by `margin` x each original range, then stretched
        (with no margin) to hold every point of `keep`; clipped to the original.

        After Perrone et al. 2019, "Learning search spaces for Bayesian optimization". The box is
        taken in each dimension's own scale (log for log dims); quantized bounds snap outward to
        multiples of q. A normal dimension becomes a uniform box, its range taken as mu ± 2 sigma
        (it has no bounds to clip to). Fixed dims, and dims absent from every point, are kept.

        Deliberate departures from a hard cut (issue 13, defects 2, 5, 6): choices keep every
        option (a box has no sides along a choice; dropping options would exclude them for good);
        a box is never narrower than `MIN_BOX` of the original range, so `margin: 0` around one
        point leaves a small box instead of a point hyperopt cannot sample (``low should be less
        than high``) or a dimension collapsed out of the trial config; `keep` (a cell's own
        trials) is held without a margin, so a box rebuilt on every relaunch from the same
        neighbours does not creep outward by one margin per launch.
        """
        if margin < 0 or not points:
            raise SpaceError(f"narrow: needs margin >= 0 and at least one point, got {margin}, {len(points)}")
        for i, point in enumerate([*points, *keep]):
            for d in self.searched():
                reason = _dim_reason(d, point[d.name]) if d.name in point else None
                if reason:
                    raise SpaceError(f"narrow: point {i}: {reason}")
        dims = []
        for d in self.dims:
            values = [p[d.name] for p in points if d.name in p]
            kept = [p[d.name] for p in keep if d.name in p]
            dims.append(d if d.kind in ("fixed", "choice") or not values else _narrow_dim(d, values, margin, kept))
        return SearchSpace(tuple(dims))

    def describe(self) -> list[str]:
        """One human line per dimension, e.g. ``lr ~ loguniform(1e-4, 0.3)`` or ``momentum = 0.9``."""
        args = [", ".join(_fmt(a) for a in d.args) for d in self.dims]
        return [f"{d.name} = {a}" if d.kind == "fixed" else f"{d.name} ~ {d.kind}({a})"
                for d, a in zip(self.dims, args)]

    def _keys_reason(self, params: Mapping[str, Any]) -> str | None:
        names = {d.name for d in self.dims}
        unknown = sorted(str(k) for k in params if k not in names)
        if unknown:
            return f"{', '.join(unknown)}: not hyperparameters of this space ({', '.join(sorted(names))})"
        missing = [d.name for d in self.searched() if d.name not in params]
        return f"{', '.join(missing)}: missing (every searched hyperparameter needs a value)" if missing else None


def load_space(
    objective: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    override_source: str = "grid",
    directory: Path | None = None,
    objective_defaults: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """base.yaml + <objective>.yaml from `directory` (default: the packaged files) + `overrides`.

    `overrides` use the YAML syntax; each replaces a dimension in place or adds one, and its key
    must be a base key or one of the objective's. `objective_defaults`: the objective's declared
    hyperparameters (`Objective.defaults`); None reads them from `trainables`, which imports torch.
    """
    if objective == "base":
        raise SpaceError("'base' is shared by every objective, not an objective")
    folder = Path(directory) if directory is not None else _package_dir()
    if objective_defaults is None:
        objective_defaults = _declared_defaults(objective)
    own = {k: (type(v) if v is not None else None) for k, v in objective_defaults.items()}
    dims: dict[str, Dimension] = {}  # assigning an existing key keeps its place: overrides replace in place
    for key, raw, source in _read(folder / "base.yaml"):
        if key not in _BASE_KEYS:
            hint = f"; it belongs in {objective}.yaml" if key in own else ""
            raise SpaceError(_unknown(source, key, list(_BASE_KEYS), "base.yaml") + hint)
        dims[key] = _parse(key, raw, "config", source, _BASE_KEYS[key])
    path = folder / f"{objective}.yaml"
    for key, raw, source in _read(path) if path.exists() else []:
        if key not in own:
            hint = "; it is a base hyperparameter: set it in base.yaml or a grid override" if key in _BASE_KEYS else ""
            raise SpaceError(_unknown(source, key, list(own), f"objective {objective!r}") + hint)
        dims[key] = _parse(key, raw, "objective_options", source, own[key])
    for key, raw in (overrides or {}).items():
        if key in _BASE_KEYS:
            dims[key] = _parse(key, raw, "config", override_source, _BASE_KEYS[key])
        elif key in own:
            dims[key] = _parse(key, raw, "objective_options", override_source, own[key])
        else:
            raise SpaceError(_unknown(override_source, key, [*_BASE_KEYS, *own], f"base or objective {objective!r}"))
    for key, (module, registry) in _REGISTERED.items():
        if key in dims:
            _check_registered(dims[key], getattr(importlib.import_module(module), registry))
    return SearchSpace(tuple(dims.values()))


def _check_registered(dim: Dimension, registry: Any) -> None:
    """Every value a dimension can take is a registered name, or one message naming the source and what is valid."""
    values = dim.args if dim.kind in ("choice", "fixed") else ()
    for value in values:
        try:
            registry.get(value)
        except ValueError as err:
            raise SpaceError(f"{dim.source}: {dim.name!r}: {err}") from None


def space_files() -> list[Path]:
    """The packaged search-space files: base.yaml and one per objective that has hyperparameters."""
    return sorted(_package_dir().glob("*.yaml"))


def _package_dir() -> Path:
    return Path(str(files("wgtune") / "search_spaces"))


def _declared_defaults(objective: str) -> dict[str, Any]:
    from trainables.objectives import OBJECTIVES  # imports torch: only when the caller passed no defaults

    try:
        return dict(OBJECTIVES.get(objective).defaults)
    except ValueError as exc:  # the registry's UnknownNameError lists the valid names
        raise SpaceError(str(exc)) from None


def _read(path: Path) -> list[tuple[str, Any, str]]:
    """(key, raw value, "path:line") for each top-level entry of a space file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpaceError(f"{path}: search-space file not found") from None
    # Parsed once per content: a grid plans every cell from the same few files, and PyYAML's pure-Python
    # parser took ~1 s of `wgtune status` on 120 cells. A copy, so no caller can change the cached values.
    return copy.deepcopy(_entries(path, text))


@functools.lru_cache(maxsize=64)
def _entries(path: Path, text: str) -> list[tuple[str, Any, str]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # for line numbers and duplicate keys
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = f":{exc.problem_mark.line + 1}" if exc.problem_mark else ""
        started = f" (started on line {exc.context_mark.line + 1})" if exc.context_mark else ""
        what = f"{exc.context}{started}: {exc.problem}" if exc.context else str(exc.problem)
        raise SpaceError(f"{path}{line}: malformed YAML: {what}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: expected a mapping of hyperparameter -> distribution, got {type(data).__name__}")
    lines: dict[str, int] = {}
    for key_node, _ in node.value:  # safe_load would keep the last of duplicate keys silently
        key, line = str(key_node.value), key_node.start_mark.line + 1
        if key in lines:
            raise SpaceError(f"{path}:{line}: {key!r} is set twice (first on line {lines[key]})")
        lines[key] = line
    for key in data:
        if not isinstance(key, str):
            raise SpaceError(f"{path}:{lines.get(str(key), 1)}: {key!r}: hyperparameter names must be strings")
    return [(key, raw, f"{path}:{lines.get(key, 1)}") for key, raw in data.items()]


def _unknown(source: str, key: Any, valid: list[str], owner: str) -> str:
    valid_list = ", ".join(valid) or "none"
    return f"{source}: {key!r}: unknown hyperparameter for {owner}.{_hint(key, valid)} Valid: {valid_list}"


def _hint(name: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(name), valid, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _parse(name: str, raw: Any, target: str, source: str, expect: Any) -> Dimension:
    """Validate one YAML entry into a Dimension; `expect` is a type, a tuple of allowed values, or None."""
    where = f"{source}: {name!r}"
    if isinstance(raw, list):
        raise SpaceError(f"{where}: a plain list is ambiguous; write {{choice: {raw!r}}} to search over it")
    if not isinstance(raw, Mapping):
        dim = Dimension(name, "fixed", (raw,), target, source)
    elif len(raw) != 1:
        found = f"got {len(raw)}: {', '.join(map(str, raw))}" if raw else "got an empty mapping"
        raise SpaceError(f"{where}: write one distribution, e.g. {{uniform: [low, high]}}, or a plain value; {found}")
    else:
        ((kind, args),) = raw.items()
        if kind not in _ARITY:
            hint = _hint(kind, list(_ARITY))
            raise SpaceError(f"{where}: unknown distribution {kind!r}.{hint} Valid: {', '.join(_ARITY)}")
        dim = Dimension(name, kind, _parse_args(where, kind, args), target, source)
    problem = _type_problem(dim, expect)
    if problem:
        raise SpaceError(f"{where}: {problem}")
    return dim


def _parse_args(where: str, kind: str, args: Any) -> tuple:
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: choice takes a non-empty list of options, got {args!r}")
        for i, option in enumerate(args):
            if isinstance(option, (list, dict)):
                raise SpaceError(f"{where}: choice options must be scalars (no nested spaces), got {option!r}")
            if any(_same(option, o) for o in args[:i]):
                raise SpaceError(f"{where}: choice option {option!r} is listed twice")
        return tuple(args)
    names = _ARITY[kind]
    if not isinstance(args, list) or len(args) != len(names):
        raise SpaceError(f"{where}: {kind} takes [{', '.join(names)}], got {args!r}")
    for arg_name, a in zip(names, args):
        if isinstance(a, str) and re.fullmatch(r"[-+]?[\d.]+[eE][-+]?\d+", a):
            raise SpaceError(f"{where}: {arg_name} {a!r} is a string: YAML 1.1 floats need a dot and a signed "
                             "exponent (1.0e-4, 1.0e+4)")
        if not isinstance(a, numbers.Real) or isinstance(a, bool) or not math.isfinite(a):
            raise SpaceError(f"{where}: {kind} {arg_name} must be a finite number, got {a!r}")
    values = tuple(int(a) if isinstance(a, numbers.Integral) else float(a) for a in args)
    if kind == "normal":
        if values[1] <= 0:
            raise SpaceError(f"{where}: normal needs sigma > 0, got {values[1]}")
        return values
    low, high = values[:2]
    if low >= high:
        raise SpaceError(f"{where}: {kind} needs low < high, got low={low}, high={high}")
    if kind in LOG_KINDS and low <= 0:
        raise SpaceError(f"{where}: {kind} is log scale and needs bounds > 0, got low={low} (uniform takes 0)")
    if kind in QUANTIZED_KINDS and values[2] <= 0:
        raise SpaceError(f"{where}: {kind} needs q > 0, got {values[2]}")
    if kind == "qloguniform" and round(low / values[2]) < 1:  # log(0) would break TPE's density over this dim
        raise SpaceError(f"{where}: qloguniform low={low} rounds to 0 with q={values[2]}; make low >= q")
    return values


def _type_problem(dim: Dimension, expect: Any) -> str | None:
    """What is wrong with `dim` for a key that takes `expect`, or None."""
    listed = dim.kind in ("fixed", "choice")
    if expect is None or (expect is float and not listed):
        return None
    if not listed:
        if expect is int:
            ok = dim.integer
            return None if ok else f"is an integer: use quniform/qloguniform with integer bounds and q, not {dim.kind}"
        return f"takes {_expected(expect)}: a plain value or a choice, not {dim.kind}"
    if isinstance(expect, tuple):
        bad = [v for v in dim.args if v not in expect]
    else:  # bool is an int to Python, and a number to no one
        kinds = {int: numbers.Integral, float: numbers.Real}.get(expect, expect)
        bad = [v for v in dim.args if not isinstance(v, kinds) or (isinstance(v, bool) and expect is not bool)]
    return f"{bad[0]!r} is not valid; it takes {_expected(expect)}" if bad else None


def _expected(expect: Any) -> str:
    return f"one of {', '.join(map(str, expect))}" if isinstance(expect, tuple) else f"a {expect.__name__}"


def _dim_reason(d: Dimension, value: Any) -> str | None:
    """Why `value` lies outside dimension `d`, or None."""
    if d.kind == "fixed":
        return None if _same(value, d.args[0]) else f"{d.name}: {value!r} differs from the fixed value {d.args[0]!r}"
    if d.kind == "choice":
        ok = any(_same(value, o) for o in d.args)
        return None if ok else f"{d.name}: {value!r} is not an option; options: {', '.join(map(repr, d.args))}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        return f"{d.name}: {value!r} is not a finite number"
    if d.kind == "normal":
        return None
    low, high = d.args[:2]
    if d.kind in QUANTIZED_KINDS:
        q, steps = d.args[2], value / d.args[2]
        if abs(steps - round(steps)) > _TOL * max(1.0, abs(steps)):
            return f"{d.name}: {value!r} is not a multiple of q={q}"
        low, high = round(low / q) * q, round(high / q) * q  # hyperopt rounds draws from [low, high]
    tol = _TOL * max(abs(low), abs(high))
    return None if low - tol <= value <= high + tol else f"{d.name}: {value!r} lies outside [{_fmt(low)}, {_fmt(high)}]"


MIN_BOX = 0.05
"""The narrowest a narrowed dimension gets, as a fraction of its original range (in its own scale)."""


def _narrow_dim(d: Dimension, values: list[Any], margin: float, keep: Sequence[Any] = ()) -> Dimension:
    source = f"{d.source} (narrowed around {len(values)} points)"
    vmin, vmax = min(values), max(values)
    if d.kind == "normal":  # no bounds to clip to; its range is taken as mu ± 2 sigma
        lo0, hi0, kind, span = -math.inf, math.inf, "uniform", 4 * d.args[1]
    else:
        lo0, hi0, kind = d.args[0], d.args[1], d.kind
    f, g = (math.log, math.exp) if kind in LOG_KINDS else (float, float)
    if d.kind != "normal":
        span = f(hi0) - f(lo0)
    low, high = f(vmin) - margin * span, f(vmax) + margin * span
    if keep:
        low, high = min(low, f(min(keep))), max(high, f(max(keep)))
    short = MIN_BOX * span - (high - low)
    if short > 0:  # widen a box too narrow to sample about its centre, within the original range
        low, high = low - short / 2, high + short / 2
        low, high = (f(lo0), f(lo0) + MIN_BOX * span) if low < f(lo0) else (low, high)
        low, high = (f(hi0) - MIN_BOX * span, f(hi0)) if high > f(hi0) else (low, high)
    low, high = max(lo0, g(low)), min(hi0, g(high))
    low, high = min(low, vmin, *keep), max(high, vmax, *keep)  # exp(log(x)) may miss x by an ulp
    if kind in QUANTIZED_KINDS:
        q = d.args[2]
        low, high = max(lo0, math.floor(low / q) * q), min(hi0, math.ceil(high / q) * q)
        if low >= high:  # the range holds one multiple of q here: take the next one too
            low, high = (low, low + q) if low + q <= hi0 else (high - q, high)
    if low >= high:  # the original range itself is one value: nothing to narrow
        return d
    if d.integer:
        return replace(d, args=(int(low), int(high), d.args[2]), source=source)
    return replace(d, kind=kind, args=(float(low), float(high), *d.args[2:]), source=source)


def _as_dimension_type(d: Dimension, value: Any) -> Any:
    """A value as the objective receives it: int for integer dims, float for other numeric ones."""
    if d.kind in ("choice", "fixed"):
        return value
    return int(round(value)) if d.integer else float(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python; an option True is not 1
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # e.g. an array compared with a scalar
        return False


def _fmt(x: Any) -> str:
    if isinstance(x, float) and x != 0 and not 1e-3 <= abs(x) < 1e4:
        mantissa, exponent = f"{x:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:.4g}" if isinstance(x, float) else str(x)
