"""Settings come from flags, then EXPLAIND_* variables, then defaults, and are validated."""

from __future__ import annotations

import argparse

import pytest

from explaind.config import Settings, add_arguments, load_settings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_win_over_environment_which_wins_over_defaults():
    env = {"EXPLAIND_MAX_BATCH_ROWS": "32", "EXPLAIND_PORT": "6000", "EXPLAIND_MAX_DELAY_MS": "0.5"}
    settings = load_settings(parse(["--port", "7000"]), env)
    assert settings.port == 7000
    assert settings.max_batch_rows == 32
    assert settings.max_delay_ms == 0.5
    assert settings.grace_period_s == Settings().grace_period_s


@pytest.mark.parametrize("env, message", [
    ({"EXPLAIND_MAX_BATCH_ROWS": "many"}, "EXPLAIND_MAX_BATCH_ROWS: expected int, got 'many'"),
    ({"EXPLAIND_MAX_BATCH_ROWS": "0"}, "max_batch_rows must be positive"),
    ({"EXPLAIND_PROVIDERS": "tpu"}, "providers must be auto, cpu or cuda"),
    ({"EXPLAIND_PARTIAL_EVERY": "0"}, "partial_every"),
    ({"EXPLAIND_PARTIAL_MARGIN_MS": "-1"}, "partial_margin_ms must be >= 0, got -1.0"),
    ({"EXPLAIND_SPIN": "1"}, "spin must be run, always or off, got '1'"),
    ({"EXPLAIND_COMPUTE_NICE": "20"}, "compute_nice must be in .0, 19., got 20"),
    ({"EXPLAIND_BLAS_THREADS": "-1"}, "blas_threads must be >= 0"),
    ({"EXPLAIND_SHARED_ARENA": "maybe"}, "EXPLAIND_SHARED_ARENA: expected bool, got 'maybe'"),
    ({"EXPLAIND_HTTP_PORT": "70000"}, "http_port must be in .-1, 65535. (-1: off), got 70000"),
    ({"EXPLAIND_HTTP_PORT": "50051"}, "http_port must differ from port, metrics_port and health_port, got 50051"),
    ({"EXPLAIND_HTTP_MAX_INSTANCES": "0"}, "http_max_instances must be positive"),
])
def test_bad_settings_are_refused_with_the_name(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(parse([]), env)


@pytest.mark.parametrize("text, value", [("false", False), ("0", False), ("No", False), ("true", True), ("1", True)])
def test_boolean_settings_parse_their_text(text, value):
    assert load_settings(parse([]), {"EXPLAIND_SHARED_ARENA": text}).shared_arena is value
    assert load_settings(parse(["--shared-arena", text]), {}).shared_arena is value


def test_empty_repository_means_the_bundled_demo():
    path = Settings().repository_path
    assert path.name == "repository" and path.parent.name == "demo"
    assert (path / "tabular" / "model.yaml").is_file()
