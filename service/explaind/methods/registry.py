"""The methods explaind offers, by request field name."""

from __future__ import annotations

from .base import Method
from .occlusion import Occlusion
from .rise import Rise


def all_methods() -> dict[str, Method]:
    methods: list[Method] = [Occlusion(), Rise()]
    return {m.name: m for m in methods}
