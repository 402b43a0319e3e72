"""The evaluation harness: the paper's protocol on a data set, its records and its tables.

- `engine.evaluation.evaluate`: every clip degraded and restored by every method (`python -m engine.evaluate`);
- `engine.evaluation.data`: DAVIS preparation and its cache (`python -m engine.data`);
- `engine.evaluation.report`: results on disk (resumable) and the summary tables;
- `engine.evaluation.metrics_extra`: LPIPS and FVD (weights are the user's files).
"""
