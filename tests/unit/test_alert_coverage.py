"""No silent loss: every counter of dropped, refused or unusable data has an
alert rule that reads it (deploy/prometheus/alerts.yml), or a stated reason."""

from __future__ import annotations

import re

from tests.deploy_assets import MetricCatalogue, alert_rules, metric_names_in

# Counter families whose names say data was dropped, refused, rejected,
# skipped, ignored or lost, and those whose labels carry such outcomes.
_LOSS = re.compile(r"dropped|refused|rejected|skipped|lost|ignored|non_finite|overflow|"
                   r"dead_letters")
_OUTCOMES = {"streamrec_serving_deltas_applied", "streamrec_sync_pushes",
             "streamrec_trainer_checkpoints"}
# Counted on purpose, not lost: what the configuration asks for.
BY_DESIGN = {
    "streamrec_trainer_table_filtered_ids": "the frequency filter (min_count) at work",
}


def test_every_counter_of_dropped_data_has_an_alert() -> None:
    catalogue = MetricCatalogue()
    counters = {f for f, kind in catalogue.families.items()
                if kind in ("Counter", "CounterMetricFamily")
                and (_LOSS.search(f) or f in _OUTCOMES)}
    assert "streamrec_ingest_joiner_dropped" in counters  # the pattern finds them
    read = set().union(*(metric_names_in(r["expr"]) for r in alert_rules()))
    silent = sorted(f for f in counters - BY_DESIGN.keys() if not catalogue.family_used(f, read))
    assert not silent, f"add an alert (and its promtool test) reading {silent}"


def test_every_alert_has_a_promtool_case_where_it_fires() -> None:
    from tests.deploy_assets import DEPLOY, load_yaml

    cases = load_yaml(DEPLOY / "prometheus" / "alerts.test.yml")["tests"]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"]
             if t.get("exp_alerts")}
    untested = sorted({r["alert"] for r in alert_rules()} - fired)
    assert not untested, f"add a case to deploy/prometheus/alerts.test.yml firing {untested}"
