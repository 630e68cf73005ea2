"""Drift monitoring: live traffic against the distributions of the bundle's training data.

- ``stats``: PSI, Jensen-Shannon, KS against reference quantiles.
- ``reference``: the features (event mix, item popularity, session length, user features, top-1 score), the
  reference a bundle carries (``drift_reference.json``) and the per-event codes of any stream of events.
- ``monitor``: windows, breach lines (``conf/drift.yaml``), alerts.
- ``service``: the gauges of a running service (``/metrics``); alert rules in ``conf/prometheus/drift_rules.yaml``.
- ``report``: ``python -m serving.drift`` (table, HTML with plots under ``artifacts/reports/drift/``).
"""
