"""The tenants file: parsed strictly (errors name the key), aliases refused, labels bounded."""

from __future__ import annotations

import pytest

from explaind.config import load_settings
from explaind.tenants import TenantPolicy, load_policies, parse_policies

GOOD = """
default: {priority: interactive, rows_per_second: 0, rows_in_flight: 0}   # 0 = unlimited
tenants:
  batch-reports: {priority: batch, rows_per_second: 50000, rows_in_flight: 200000}
  dashboards: {rows_in_flight: 1000}
"""


def test_a_valid_file_gives_each_tenant_its_policy_and_the_others_the_default():
    policies = parse_policies(GOOD)
    assert policies.policy("batch-reports") == TenantPolicy("batch", 50_000.0, 200_000)
    assert policies.policy("dashboards") == TenantPolicy("interactive", 0.0, 1000)  # the rest from default
    assert policies.policy("anyone") == TenantPolicy()
    assert [policies.label(n) for n in ("batch-reports", "anonymous", "anyone", "x" * 1000)] == \
        ["batch-reports", "anonymous", "default", "default"]
    assert policies.labels() == ["anonymous", "batch-reports", "dashboards", "default"]


def test_an_empty_setting_or_file_means_everyone_interactive_without_quotas(tmp_path):
    assert load_policies("").policy("anyone") == TenantPolicy()
    empty = tmp_path / "tenants.yaml"
    empty.write_text("# nothing yet\n")
    assert load_policies(str(empty)).tenants == {}


def test_a_default_policy_applies_to_the_listed_tenants_keys_they_leave_out():
    policies = parse_policies("default: {priority: batch, rows_in_flight: 10}\ntenants: {a: {rows_per_second: 5}}")
    assert policies.policy("a") == TenantPolicy("batch", 5.0, 10)


@pytest.mark.parametrize("text, message", [
    ("defaults: {}", "'defaults': unknown key (expected default, tenants)"),
    ("tenants: {a: {priority: batch, rows_in_flite: 3}}", "tenants.a.'rows_in_flite': unknown key"),
    ("tenants: {a: {priority: urgent}}", "tenants.a.priority: expected one of interactive, batch, got 'urgent'"),
    ("tenants: {a: {rows_per_second: fast}}", "tenants.a.rows_per_second: expected a number >= 0 (0: unlimited), "
                                              "got 'fast'"),
    ("tenants: {a: {rows_per_second: -1}}", "tenants.a.rows_per_second: expected a number >= 0"),
    ("tenants: {a: {rows_per_second: .inf}}", "tenants.a.rows_per_second: expected a number >= 0"),
    ("tenants: {a: {rows_in_flight: 2.5}}", "tenants.a.rows_in_flight: expected a whole number >= 0 (0: unlimited), "
                                            "got 2.5"),
    ("tenants: {a: {rows_in_flight: true}}", "tenants.a.rows_in_flight: expected a whole number >= 0"),
    ("tenants: {a: [1, 2]}", "tenants.a: expected a mapping with keys priority, rows_per_second, rows_in_flight, "
                             "got a list"),
    ("tenants: [a, b]", "tenants: expected a mapping of tenant name to policy, got a list"),
    ("tenants: {default: {}}", "tenants.default: 'default' is not a tenant name"),
    ("tenants: {1: {}}", "tenants: expected tenant names of 1 to 100 characters"),
    ("- a\n- b", "expected a mapping with keys default and tenants, got a list"),
    ("tenants: {a: {priority: batch}", "not valid YAML"),
])
def test_invalid_files_are_refused_naming_the_key(text, message):
    with pytest.raises(ValueError) as error:
        parse_policies(text)
    assert message in str(error.value)


def test_anchors_and_aliases_are_refused_before_anything_is_built():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    with pytest.raises(ValueError, match="line 1: YAML anchors and aliases are not allowed"):
        parse_policies(bomb)
    with pytest.raises(ValueError, match="anchors and aliases"):
        parse_policies("default: &d {priority: batch}\ntenants: {a: *d}")


def test_the_server_refuses_to_start_with_a_bad_file_naming_it(tmp_path):
    bad = tmp_path / "tenants.yaml"
    bad.write_text("tenants:\n  reports: {priority: batch, rows_per_minute: 5}\n")
    with pytest.raises(ValueError) as error:
        load_settings(env={"EXPLAIND_TENANTS": str(bad)})
    assert str(error.value) == (f"tenants file {bad}: tenants.reports.'rows_per_minute': unknown key "
                                "(expected priority, rows_per_second, rows_in_flight)")
    with pytest.raises(ValueError, match="tenants: cannot read"):
        load_settings(env={"EXPLAIND_TENANTS": str(tmp_path / "missing.yaml")})
    with pytest.raises(ValueError, match="interactive_weight and batch_weight must be positive"):
        load_settings(env={"EXPLAIND_BATCH_WEIGHT": "0"})
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert load_settings(env={"EXPLAIND_TENANTS": str(good)}).tenants == str(good)
