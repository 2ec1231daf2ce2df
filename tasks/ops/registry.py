"""The one registry of operations: every part of tierflow that needs to know what ops exist, or
what one of them takes, asks here (the CLI's op list, help, hints and progress totals, the ``op``
flow's dispatch, the pipeline).

Ops come from entry points of group ``tierflow.ops`` (``importlib.metadata``), each naming an
:class:`OpSpec` (what ``tierflow.ops.block_op`` returns). tierflow registers its own ops the same
way (pyproject.toml); they are also taken from the catalogue first, so a source checkout whose
entry points are not installed still has them, and no plugin can shadow one: an entry point with
a built-in's name that does not give that very spec is refused.

A plugin that cannot be used (it does not import, gives no ``OpSpec``, declares it wrongly, its
entry point's name differs from the op's, or another plugin takes the same name) breaks only its
own op: :func:`broken_plugins` lists it, :func:`get_op` of its name raises one
:class:`~tierflow.errors.PluginError` naming the distribution, the entry point and the op, and
every other op works.

Lookups are cheap: the catalogue imports numpy and pydantic, never Prefect or the heavy kernels;
plugins are imported once per process, on the first lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from tierflow.errors import InvalidParameterError, PluginError
from tierflow.tasks.ops.spec import OpSpec

__all__ = ["ENTRY_POINT_GROUP", "BrokenPlugin", "all_ops", "broken_plugins", "get_op", "op_names", "reload_ops"]

ENTRY_POINT_GROUP = "tierflow.ops"


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point of group ``tierflow.ops`` that gives no usable op."""

    name: str
    """The entry point's name (the op it was meant to give)."""
    package: str
    """The distribution that declares it."""
    entry_point: str
    """``NAME = module:attribute``."""
    problem: str

    def error(self) -> PluginError:
        """The one error a use of this op raises."""
        return PluginError(f"op {self.name!r} from plugin {self.package} (entry point {self.entry_point}) cannot be used: {self.problem}",
                           hint=f"fix the plugin, or uninstall it: pip uninstall {self.package}")


@dataclass(frozen=True)
class _Registry:
    ops: dict[str, OpSpec]
    broken: list[BrokenPlugin]

    def broken_op(self, name: str) -> BrokenPlugin | None:
        return next((plugin for plugin in self.broken if plugin.name == name), None)


def _describe(point: EntryPoint) -> tuple[str, str]:
    package = point.dist.name if point.dist is not None else "(unknown distribution)"
    return package, f"{point.name} = {point.value}"


def _one_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(f"{type(exc).__name__}: {message}".split())


@cache
def _registry() -> _Registry:
    from tierflow.tasks.ops.catalog import BUILTIN_OPS

    ops: dict[str, OpSpec] = {spec.name: spec for spec in BUILTIN_OPS}
    builtin_ids = {id(spec) for spec in BUILTIN_OPS}
    broken: list[BrokenPlugin] = []
    found: dict[str, list[tuple[OpSpec, str, str]]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        package, where = _describe(point)
        try:
            loaded = point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin breaks only its own op
            broken.append(BrokenPlugin(point.name, package, where, f"it does not import ({_one_line(exc)})"))
            continue
        if id(loaded) in builtin_ids and ops.get(point.name) is loaded:
            continue  # tierflow's own registration of a built-in
        if not isinstance(loaded, OpSpec):
            broken.append(BrokenPlugin(point.name, package, where, f"{point.value} is a {type(loaded).__name__}, not an op "
                                              "(decorate the kernel with tierflow.ops.block_op)"))
        elif loaded.name != point.name:
            broken.append(BrokenPlugin(point.name, package, where, f"the entry point is called {point.name!r} but its op "
                                              f"{loaded.name!r}: give both the same name"))
        elif point.name in ops:
            broken.append(BrokenPlugin(point.name, package, where, f"{point.name!r} is one of tierflow's own ops: "
                                              "a plugin cannot replace it, choose another name"))
        elif all((package, where) != (p, w) for _, p, w in found.get(point.name, [])):  # one distribution seen twice on sys.path
            found.setdefault(point.name, []).append((loaded, package, where))
    for name, candidates in found.items():
        if len(candidates) > 1:
            others = "; ".join(f"{package} ({where})" for _, package, where in candidates)
            broken.append(BrokenPlugin(name, candidates[0][1], candidates[0][2],
                                        f"{len(candidates)} plugins give an op {name!r}: {others}; uninstall all but one"))
            continue
        spec, package, where = candidates[0]
        ops[name] = replace(spec, package=package, entry_point=where)
    return _Registry(ops, broken)


@cache
def _builtin_ops() -> dict[str, OpSpec]:
    from tierflow.tasks.ops.catalog import BUILTIN_OPS

    return {spec.name: spec for spec in BUILTIN_OPS}


def reload_ops() -> None:
    """Forget the ops found so far (the next lookup reads the entry points again)."""
    _registry.cache_clear()


def all_ops() -> list[OpSpec]:
    """Every usable op: tierflow's own in declaration order, then the plugins'."""
    return list(_registry().ops.values())


def op_names() -> list[str]:
    """The names of every usable op, in the order of :func:`all_ops`."""
    return list(_registry().ops)


def broken_plugins() -> list[BrokenPlugin]:
    """The entry points of group ``tierflow.ops`` that give no usable op."""
    return list(_registry().broken)


def get_op(name: str) -> OpSpec:
    """The op called ``name``.

    Raises
    ------
    PluginError
        If ``name`` is the op of a plugin that cannot be used (naming the plugin and why).
    InvalidParameterError
        (a ``ValueError``) naming the op asked for and listing the known ones.
    """
    builtin = _builtin_ops().get(name)
    if builtin is not None:
        return builtin  # no plugin can replace a built-in (see _registry): no entry point need be read or imported
    registry = _registry()
    if name in registry.ops:
        return registry.ops[name]
    plugin = registry.broken_op(name)
    if plugin is not None:
        raise plugin.error()
    raise InvalidParameterError(f"no operation {name!r}", hint=f"choose one of {', '.join(registry.ops)} "
                                "(`tierflow ops list` describes them)")
