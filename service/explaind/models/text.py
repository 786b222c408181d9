"""How the models layer words sizes, shapes and names in a FAILED model's reason.

Shared by the file, ONNX-check, signature and catalogue modules so that every reason formats a byte
count, a shape or a list of tensor names the same way (tests and operators match on these words).
"""

from __future__ import annotations

from collections.abc import Iterable


def human_bytes(n: int) -> str:
    """``n`` bytes as "512 bytes", "2.9 KB", "1.0 GB" (binary units)."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}"
    return f"{n} bytes"  # unreachable; keeps type checkers content


def first_line(text: str) -> str:
    """The first line of an exception's message: library messages can run to pages."""
    text = text.strip()
    return text.splitlines()[0] if text else "(no message)"


def clip(text: str, limit: int = 100) -> str:
    """``text`` cut to ``limit`` characters, "..." marking a cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_shape(shape: Iterable[int]) -> str:
    """A shape as "[?, 3, 64, 64]"; negative (dynamic) dimensions print as "?"."""
    return "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def quoted_names(items: Iterable[str]) -> str:
    """Tensor names quoted and comma-separated, "none" for none."""
    return ", ".join(repr(n) for n in items) or "none"
