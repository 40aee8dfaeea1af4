"""Frozen dataclass configs: validated on construction, loadable from TOML, flat dicts for MLflow."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from recsys_ebm._compat import tomllib

C = TypeVar("C", bound="Config")


@dataclasses.dataclass(frozen=True)
class Config:
    """Base for every config: ``from_dict`` rejects unknown keys by name, ``to_dict`` feeds MLflow."""

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(names)}")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        coerced = {}
        for key, value in values.items():
            # TOML and CLI values arrive as int where a float is declared; accept them
            if types[key] in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            coerced[key] = value
        return cls(**coerced)

    @classmethod
    def from_saved(cls: type[C], values: dict[str, Any]) -> C:
        """A config read back from a saved model: options the model was saved without take the
        value that was in force then (``legacy_defaults``), not today's default."""
        return cls.from_dict({**cls.legacy_defaults(), **values})

    @classmethod
    def legacy_defaults(cls) -> dict[str, Any]:
        """Options added after models were already being saved, with their value before."""
        return {}

    @classmethod
    def from_toml(cls: type[C], path: str | Path, table: str | None = None) -> C:
        """Read ``[table]`` (or the whole file) of a TOML file."""
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
        if table is not None:
            if table not in data:
                raise ValueError(f"{path}: no [{table}] table; found {sorted(data)}")
            data = data[table]
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def check(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``; used in ``__post_init__``."""
    if not condition:
        raise ValueError(message)


#: the protocol kinds a pipeline may give its own defaults for (``[ranking]``, ``[rating]``)
PROTOCOL_KINDS = ("ranking", "rating")


def pipeline_defaults(pipeline: dict[str, Any] | None, kind: str | None = None) -> dict[str, Any]:
    """A parsed pipeline's ``[model]`` table updated by its ``[<kind>]`` table, when it has one:
    a model whose best options differ between ranking (the top-N protocols) and rating
    prediction keeps the options of one kind there ({} for None)."""
    if kind is not None and kind not in PROTOCOL_KINDS:
        raise ValueError(f"kind must be one of {PROTOCOL_KINDS}, got {kind!r}")
    pipeline = pipeline or {}
    return {**pipeline.get("model", {}), **(pipeline.get(kind, {}) if kind else {})}


def read_pipeline(name: str, directory: str | Path | None = None) -> dict[str, Any] | None:
    """The parsed ``pipelines/<name>.toml`` (tuned options, tuning grids); None when absent.

    The files ship inside the wheel as the package data ``recsys_ebm.pipelines`` (the repository's
    top-level ``pipelines/`` folder); a source checkout run without installing (``PYTHONPATH``)
    reads that folder beside the package. ``directory`` reads another folder instead (tests).
    """
    if directory is not None:
        root: Any = Path(directory)
    else:
        try:
            root = resources.files("recsys_ebm.pipelines")
        except ModuleNotFoundError:  # uninstalled source checkout: <repo>/pipelines
            root = Path(__file__).resolve().parents[1] / "pipelines"
    path = root.joinpath(f"{name}.toml")
    if not path.is_file():
        return None
    return tomllib.loads(path.read_text(encoding="utf-8"))
