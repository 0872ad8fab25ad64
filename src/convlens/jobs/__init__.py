"""Batch jobs: progress events, the append-only results store, explaining many images, the demo.

``progress`` (events the library emits; front ends draw them), ``store`` (atomic writes and
the sharded record store), ``explain_job`` (:class:`ExplainJob`, what ``convlens explain``
runs), ``demo`` (the demo page). See docs/architecture.md, "Layers and the direction data flows".
"""
