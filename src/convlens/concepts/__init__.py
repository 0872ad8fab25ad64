"""Concepts: what a layer's channels stand for (reference sets, TCAV)."""
