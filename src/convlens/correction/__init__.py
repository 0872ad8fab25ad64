"""Correcting a shortcut the audit found (convlens 12): see docs/architecture.md, "Correction".

``run.py`` is ``cl.correct``: it reads the audit (``audits.py``), estimates the strategy's
class-matched direction at a layer (``direction.py``) and hands it to a method: ``pclarc.py``
projects it out (the wrapper itself is ``models/projection.py``), ``rrclarc.py`` fine-tunes
the layers above it, ``lastlayer.py`` refits the head (both on ``training.py``'s data, with
its checkpoint). ``folder.py`` writes the corrected model as a folder that ``cl.load_model``
reads (``models/corrected.py``); ``evidence.py`` measures what the correction did,
``report.py`` shows it, ``guidance.py`` lists the images to relabel, remove or augment.
"""
