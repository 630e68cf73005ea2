"""Behaviour analytics over the prepared events: ``python -m features.analytics data=<name>``.

- ``funnels``: steps, ordered funnels (overall, by day, category, segment), cart abandonment, time from
  first view to purchase, repeat purchases, paths before a purchase (pure pandas functions);
- ``live``: the live funnel exposure → click → purchase of recommendations, from the service's logs;
- ``report``: plots and the self-contained HTML page;
- ``job``: reads the prepared data, checks that the counts reconcile, writes everything atomically.
"""
