"""Campaigns, from spec to readout (the training of their models is ``training.campaigns``).

- ``spec``: the campaign YAML as a validated pydantic model, and its published JSON Schema;
- ``eligibility``: targeting checked against the data, eligibility rules, consent, exclusions;
- ``audience`` / ``ray_audience``: scoring, control group, budget, channel, send time, offer;
- ``scoring``: the campaign model's files, batch scoring (CUDA or CPU) and the service's scorer;
- ``build_audience``: ``python -m serving.campaigns.build_audience campaign=<name>``;
- ``outcomes``: each audience user's outcome from the events after ``send_at`` (or a file, or a
  documented simulation);
- ``readout``: effects with Wilson/Newcombe and Welch intervals, ROI on margin;
- ``evaluate`` / ``report``: ``python -m serving.campaigns.evaluate campaign=<name>`` and its HTML report;
- ``synthetic``: made-up profiles for benchmarks and tests.
"""
