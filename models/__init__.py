"""Plain ``nn.Module``s and closed-form baselines. No Lightning, no I/O."""
