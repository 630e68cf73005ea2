"""Bundle loading, index backends, online store, rules, and the Ray Serve app."""
