"""Correcting a shortcut the audit found (convlens 12): see docs/architecture.md, "Correction".

``direction.py`` estimates a strategy's class-matched direction at a layer, ``pclarc.py``
projects it out (``correct``; the wrapper itself is ``models/projection.py``), ``folder.py``
writes the corrected model as a folder that ``cl.load_model`` reads (``models/corrected.py``).
"""
