"""How a metric is compared, declared with it (harness.tasks.metrics) and logged with every run
(`task_metric_scale`, `task_metric_margin`), so the report reads it without importing torch:
`linear` (accuracy: means and differences in points) or `log` (MSE, which spans orders of
magnitude: geometric means and ratios), and the smallest difference that matters, the default
equivalence margin (points on a linear scale, a ratio above 1 on a log one)."""

SCALES = ("linear", "log")
DEFAULT_MARGIN = {"linear": 0.005, "log": 1.1}  # half an accuracy point; 10% of an error
