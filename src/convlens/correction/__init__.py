"""Correcting a shortcut the audit found (convlens 12): see docs/architecture.md, "Correction".

``projection.py`` is P-ClArC's inference-time wrapper: a concept direction projected out of
one layer's output.
"""
