"""Benchmarks: specs, the runner, reports and plots, published ground truth and suites."""
