"""Concepts: what a model's layer encodes (docs/architecture.md, "Concepts").

``references.py`` finds each channel's reference images in one streaming pass (relevance and
activation maximisation), ``patches.py`` cuts their patches on demand, ``atlas.py`` draws the
atlas page; ``cav.py`` fits concept activation vectors (a linear classifier's normal,
FastCAV's mean difference) in torch on the activations' device; ``tcav.py`` tests a concept's
influence on class decisions (TCAV, Kim et al. 2018) with random runs and a t-test
(``cl.tcav``). CRP itself is an attribution method: attribution/crp.py.
"""
