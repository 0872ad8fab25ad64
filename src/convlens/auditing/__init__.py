"""Dataset-scale audits: which strategies a classifier uses, and which ones are suspicious.

``passes`` is the streaming pass into the result store; ``spray`` (Spectral Relevance
Analysis, Lapuschkin et al. 2019) clusters attribution maps; ``suspicion`` ranks the clusters;
``causal`` checks the top ones (hot region against controls); ``analysis`` assembles
``audit.json``; ``run`` holds
:func:`~convlens.auditing.run.audit` (``cl.audit``) and :class:`~convlens.auditing.run.Audit`;
``report`` draws ``OUT/report.html``. See docs/architecture.md, "Audit".

The package is called ``auditing`` so that importing it never rebinds ``convlens.audit``:
that name stays the function.
"""
