"""Concepts: what a layer's channels stand for (reference sets, TCAV); CRP itself lives in
attribution/crp.py. See docs/architecture.md, "Concepts"."""
