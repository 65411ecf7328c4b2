"""The shipped Prometheus recording rules (deploy/prometheus): Prometheus's own
promtool checks them and runs their unit tests (flowmeter-rules.test.yaml:
a peer that is an address on one node is named by the other node's
flowmeter_endpoint_info; pairs named both ways are summed; an address no
node holds stays an address). Also: the metric names the rules use are
defined in FlowmeterExport (the one definition of metric names)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import REPO

RULES = REPO / "deploy" / "prometheus" / "flowmeter-rules.yaml"
TESTS = REPO / "deploy" / "prometheus" / "flowmeter-rules.test.yaml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (Debian's prometheus package; tools/test installs it)")
    return path


def test_rules_check():
    p = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 3 rules found" in p.stdout


def test_rules_unit_tests():
    p = subprocess.run([promtool(), "test", "rules", TESTS.name], cwd=TESTS.parent, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_rules_unit_tests_can_fail(tmp_path):
    """The unit tests assert values that could be otherwise: a wrong expected rate fails."""
    shutil.copy(RULES, tmp_path / RULES.name)
    bad = TESTS.read_text().replace("value: 11\n", "value: 12\n", 1)
    assert bad != TESTS.read_text()
    (tmp_path / TESTS.name).write_text(bad)
    p = subprocess.run([promtool(), "test", "rules", TESTS.name], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0 and "FAILED" in p.stdout + p.stderr


def test_rules_use_exported_metric_names():
    text = RULES.read_text()
    for name in ("flowmeter_network_io_bytes_total", "flowmeter_endpoint_info"):
        assert name in text
    exported = subprocess.run(["grep", "-rho", "name: \"flowmeter_[a-z_]*\"", str(REPO / "Sources/FlowmeterExport/Prometheus.swift")],
                              capture_output=True, text=True).stdout
    assert '"flowmeter_network_io_bytes_total"' in exported and '"flowmeter_endpoint_info"' in exported
