"""Lightning modules and data modules, metrics, and the train / evaluate / export entry points."""
