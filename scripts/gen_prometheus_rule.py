"""Writes deploy/k8s/prometheus-operator/prometheusrule.yaml from deploy/prometheus/alerts.yml.

alerts.yml is the one place the alert rules are written; a Prometheus run by the
Prometheus Operator takes rules only as a PrometheusRule resource, so this wraps
the same groups in one. Run it after changing alerts.yml (`make prometheus-rule`);
tests/test_deploy_config.py fails while the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE = ROOT / "deploy" / "k8s" / "prometheus-operator" / "prometheusrule.yaml"

HEADER = """\
# Written by scripts/gen_prometheus_rule.py from deploy/prometheus/alerts.yml, where
# the rules and their reasons are: change that file and run `make prometheus-rule`,
# never this one. For a Prometheus run by the Prometheus Operator: it loads the
# PrometheusRules its ruleSelector picks, so add the labels yours asks for
# (kube-prometheus-stack's asks for `release: <its Helm release>` unless set otherwise).
"""


class _BlockStrings(yaml.SafeDumper):
    """Multi-line expressions as `|` blocks, as alerts.yml writes them."""


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockStrings.add_representer(str, _string)


def prometheus_rule(alerts: str) -> str:
    """The PrometheusRule resource holding the rule groups of `alerts` (alerts.yml's text)."""
    resource: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "actionstream",
            "labels": {"app.kubernetes.io/name": "actionstream"},
        },
        "spec": {"groups": yaml.safe_load(alerts)["groups"]},
    }
    body = yaml.dump(resource, Dumper=_BlockStrings, sort_keys=False, width=100)
    return HEADER + body


def main() -> int:
    RULE.write_text(prometheus_rule(ALERTS.read_text()))
    print(f"wrote {RULE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
