"""Batch jobs: explaining many images, the demo.

``explain_job`` (:class:`ExplainJob`, what ``convlens explain`` runs), ``demo`` (the demo
page). The progress events and the results store they use are leaves of the package
(:mod:`convlens.progress`, :mod:`convlens.store`); ``jobs.progress`` and ``jobs.store`` are
kept as aliases of them for compatibility. See docs/architecture.md, "Layers and the
direction data flows".
"""
