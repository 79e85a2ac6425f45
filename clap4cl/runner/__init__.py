"""Runs from a config: validation, assembly, the experiment loop, results, resume, report and plots.

The only layer that imports both `strategies` and `scenarios`."""
