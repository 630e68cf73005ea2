"""Online experiments: spec, assignment, exposure logging (inside the service) and the readout.

- ``spec``: ``ExperimentSpec`` (``conf/experiment/<name>.yaml``), strictly validated; ``check_set``.
- ``assignment``: deterministic hashing of the unit key with the experiment's salt.
- ``exposure``: the durable exposure and attribution logs.
- ``router``: ``Experiments``, what the service calls per request.
- ``readout``: exposures joined with events -> per-variant figures, lift, p-values, SRM, CUPED.
- ``report``: the readout's table and HTML report.

Statistics come from ``serving.stats``.
"""
