"""Where the observability tests find Debian's Prometheus tools (installed by `make test-tools`),
and the repository's alert rules and dashboard."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "llm-gateway.json"

_MISSING = "{} not found: `make test-tools` installs Debian's prometheus package (needs apt-get as root)"


def tool(name: str) -> str:
    """The path of `prometheus` or `promtool`, or a skip saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(_MISSING.format(name))
    return path
