"""Dataset-scale audits: which strategies a classifier uses, and which ones are suspicious.

``spray`` (Spectral Relevance Analysis, Lapuschkin et al. 2019) clusters attribution maps;
``suspicion`` ranks the clusters and checks the top ones causally. See docs/architecture.md,
"Layers and the direction data flows": audit sits above jobs and below present.
"""
