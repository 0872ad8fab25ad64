"""Concepts a network has learned (TCAV...); CRP itself lives in attribution/crp.py."""
