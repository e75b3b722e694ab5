"""Decoder registry: name -> factory. A protocol is added by one ``register`` call in its package."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from sensor.protocols.base import Decoder

_FACTORIES: dict[str, Callable[..., Decoder]] = {}
DEFAULT_PORTS: dict[str, tuple[int, ...]] = {}
BUILTIN = ("sensor.protocols.modbus", "sensor.protocols.s7comm", "sensor.protocols.mqtt")


def register(name: str, factory: Callable[..., Decoder], ports: tuple[int, ...]) -> None:
    _FACTORIES[name] = factory
    DEFAULT_PORTS[name] = ports


def load_builtin() -> None:
    for mod in BUILTIN:
        try:
            import_module(mod)
        except ModuleNotFoundError as e:  # a protocol package not present in this build
            if e.name != mod:
                raise


def names() -> list[str]:
    load_builtin()
    return sorted(_FACTORIES)


def create(name: str, **options: object) -> Decoder:
    load_builtin()
    return _FACTORIES[name](**options)
