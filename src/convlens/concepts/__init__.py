"""Concepts: what a model's layer encodes, in terms a person chose (docs/architecture.md,
"Concepts").

``cav.py`` fits concept activation vectors (a linear classifier's normal, FastCAV's mean
difference) in torch on the activations' device; ``tcav.py`` tests a concept's influence on
class decisions (TCAV, Kim et al. 2018) with random runs and a t-test (``cl.tcav``).
"""
