"""What the CLI prints for people: tables of the repository, the methods, one model and a tabular
explanation. Machine output (--json) is protobuf's own JSON and is not built here."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

import numpy as np
from explaind_client.v1 import explaind_pb2 as pb

WIDTH = 100  # wrapped lists (labels, layers, feature names) stay readable in a terminal or a log
DEFAULT_TOP = 30  # a tabular explanation lists all its features up to this many, else the top ones


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = (), indent: str = "") -> str:
    """Columns padded to their widest cell; the columns in `right` (numbers) right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def _enum(enum: object, value: int) -> str:
    """An enum value's name in lower case, "-" when unspecified (a number the stubs do not know as is)."""
    name = enum.Name(value) if value in enum.values() else str(value)  # type: ignore[attr-defined]
    return "-" if name.endswith("UNSPECIFIED") else name.lower()


def status_name(info: pb.ModelInfo) -> str:
    return pb.ModelStatus.Name(info.status) if info.status in pb.ModelStatus.values() else str(info.status)


def kind_name(kind: int) -> str:
    return _enum(pb.ModelKind, kind)


def models_table(models: Sequence[pb.ModelInfo]) -> str:
    """One row a model; the reasons of the models that do not serve follow the table."""
    if not models:
        return "no models"
    rows = []
    for m in models:
        loaded = m.status != pb.FAILED  # READY, UNHEALTHY and UNLOADED models were loaded once
        rows.append([m.name, status_name(m), kind_name(m.kind), str(m.num_classes) if m.num_classes else "-",
                     str(m.num_features) if m.num_features else "-",
                     ("yes" if m.white_box else "no") if loaded else "-",
                     str(len(m.methods)) if loaded else "-", m.sha256[:12] or "-"])
    text = table(["NAME", "STATUS", "KIND", "CLASSES", "FEATURES", "WHITE-BOX", "METHODS", "SHA256"], rows,
                 right=(3, 4, 6))
    reasons = [f"{m.name} ({status_name(m)}): {m.reason}" for m in models if m.reason]
    return "\n".join([text, *([""] + reasons if reasons else [])])


def bounds(p: pb.ParameterInfo) -> str:
    """Interval notation: [1, inf) takes 1 and more; (0, 1e+06) neither end."""
    if not p.minimum and not p.maximum:
        return ""
    low = (("(" if p.exclusive_minimum else "[") + p.minimum) if p.minimum else "(-inf"
    high = (p.maximum + (")" if p.exclusive_maximum else "]")) if p.maximum else "inf)"
    return f"{low}, {high}"


def methods_text(methods: Sequence[pb.MethodInfo]) -> str:
    """Each method: what it needs, the input kinds it explains, its parameters."""
    if not methods:
        return "no methods"
    blocks = []
    for m in methods:
        kinds = ", ".join(kind_name(k) for k in m.kinds) or "-"
        lines = [f"{m.name} ({m.title}): needs {_enum(pb.Needs, m.needs)}; kinds {kinds}"]
        if m.parameters:
            rows = [[p.name, p.type, p.default_value or "-", bounds(p), "|".join(p.choices)] for p in m.parameters]
            lines.append(table(["PARAMETER", "TYPE", "DEFAULT", "BOUNDS", "CHOICES"], rows, indent="  "))
        else:
            lines.append("  no parameters")
        for name, values in (("arrays", m.arrays), ("figures", m.figures)):
            if values:
                lines.append(f"  {name}: {', '.join(values)}")
        if m.partial_results:
            lines.extend(textwrap.wrap(f"at the deadline (--allow-partial): {m.partial_results}", WIDTH,
                                       initial_indent="  ", subsequent_indent="    "))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _tensor(t: pb.TensorInfo) -> str:
    return f"{t.name} {_enum(pb.DataType, t.dtype)} [{', '.join(str(d) for d in t.shape)}]"


def _wrapped(key: str, values: Sequence[str]) -> list[str]:
    label = f"{key}:".ljust(16)
    if not values:
        return [label + "-"]
    return textwrap.wrap(", ".join(values), WIDTH, initial_indent=label, subsequent_indent=" " * 16,
                         break_on_hyphens=False, break_long_words=False)


def _numbers(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def model_text(m: pb.ModelInfo) -> str:
    """Everything GetModel says about one model, one field a line (lists wrapped)."""
    def line(key: str, value: object) -> str:
        return f"{key}:".ljust(16) + str(value)

    lines = [line("name", m.name), line("status", status_name(m))]
    if m.reason:
        lines.append(line("reason", m.reason))
    lines += [line("kind", kind_name(m.kind)), line("sha256", m.sha256 or "-"),
              line("loaded at", m.loaded_at.ToJsonString() if m.HasField("loaded_at") else "-"),
              line("run failures", m.run_failures)]
    if m.status == pb.FAILED:
        return "\n".join(lines)
    lines += [line("input", ", ".join(_tensor(t) for t in m.inputs) or "-"),
              line("output", ", ".join(_tensor(t) for t in m.outputs) or "-"),
              line("scores", m.scores or "-"), line("classes", m.num_classes)]
    lines += _wrapped("labels", list(m.labels))
    if m.kind == pb.TABULAR:
        lines.append(line("features", m.num_features))
        lines += _wrapped("feature names", list(m.feature_names) or ["(none: f0, f1, ... by position)"])
    if m.HasField("preprocess"):
        p = m.preprocess
        lines.append(line("preprocess", f"resize to {'x'.join(str(s) for s in p.size) or '-'}, divide by "
                          f"{p.scale:g}, mean {_numbers(p.mean)}, std {_numbers(p.std)}, layout {p.layout or '-'}"))
    lines.append(line("white box", "yes" if m.white_box else f"no: {m.white_box_reason or 'no reason given'}"))
    if m.white_box:
        lines.append(line("rules", ", ".join(m.rule_families) +
                          ("" if "lrp" in m.rule_families else f" (no lrp: {m.lrp_reason or 'no reason given'})")))
    if m.layers:
        lines.append(line("default layer", m.default_layer or "-"))
        lines += [("layers:" if i == 0 else "").ljust(16) + name for i, name in enumerate(m.layers)]
    lines += _wrapped("methods", list(m.methods))
    lines.append(line("batching", f"up to {m.max_batch_rows} rows, waiting up to {m.max_delay_ms:g} ms"))
    return "\n".join(lines)


def feature_names(info: pb.ModelInfo, count: int) -> list[str]:
    """The model's names when it declares one for each feature, else f0, f1, ... by position."""
    names = list(info.feature_names)
    return names if len(names) == count else [f"f{i}" for i in range(count)]


def feature_table(names: Sequence[str], values: np.ndarray, attribution: np.ndarray, top: int | None) -> str:
    """Features by |attribution|, largest first (ties in input order); the top `top` of them, or all up
    to DEFAULT_TOP when `top` is None."""
    values, attribution = np.asarray(values).reshape(-1), np.asarray(attribution, dtype=np.float64).reshape(-1)
    order = np.argsort(-np.abs(attribution), kind="stable")
    shown = len(order) if top is None and len(order) <= DEFAULT_TOP else min(top or DEFAULT_TOP, len(order))
    rows = [[names[i], f"{float(values[i]):.6g}", f"{attribution[i]:.6g}"] for i in order[:shown]]
    text = table(["FEATURE", "VALUE", "ATTRIBUTION"], rows, right=(1, 2))
    if shown < len(order):
        text += f"\n... {len(order) - shown} more features (--top N shows more)"
    return text


def evaluation_table(result: Any, infos: dict[str, pb.MetricInfo]) -> str:
    """One row per metric: its value, which way is better, its cost, and its figures."""
    rows = []
    for r in result.results:
        info = infos.get(r.metric)
        figures = ", ".join(f"{k} {v:.4g}" for k, v in sorted(r.figures.items()))
        curves = ", ".join(f"{k} [{len(v)}]" for k, v in sorted(r.curves.items()))
        rows.append([r.metric, f"{r.value:.6g}", info.better if info and info.better else "-",
                     str(r.stats.get("model_evaluations", 0)), "; ".join(x for x in (figures, curves) if x) or "-"])
    return table(["METRIC", "VALUE", "BETTER", "EVALUATIONS", "FIGURES AND CURVES"], rows)


def evaluation_json(result: Any) -> dict[str, Any]:
    """The Evaluation as plain JSON: the explanation's target and stats, each metric's value, curves,
    figures and stats (arrays as lists)."""
    e = result.explanation
    return {"explanation": {"target_class": e.target_class, "target_label": e.target_label, "stats": e.stats},
            "results": [{"metric": r.metric, "value": r.value, "figures": r.figures,
                         "curves": {k: v.tolist() for k, v in r.curves.items()}, "stats": r.stats}
                        for r in result.results]}
