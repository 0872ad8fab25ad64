"""What an audit refuses before it needs a model: the checks a caller runs first.

``convlens audit`` calls :func:`check_request` before it loads the model, so an unknown
method or metric, a missing folder or ``--group-by label`` on unlabelled data is one error
line at once rather than after the model has loaded. :func:`convlens.auditing.run.audit`
makes the same checks itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from convlens.attribution.core import get_method
from convlens.auditing.run import check_grouping
from convlens.auditing.scoring import parse_audit_metrics
from convlens.io.datasets import detect_layout


def check_request(data: str | os.PathLike[str], *, method: str, group_by: str,
                  metrics: Sequence[str] = (),
                  metric_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Refuse an audit of ``data`` that cannot run, without a model.

    Args:
        data: The dataset (ImageFolder tree, CSV or plain folder).
        method: The attribution method's name.
        group_by: ``"predicted"`` or ``"label"`` (a label grouping needs labelled data).
        metrics: Maps-based metric keys (``"deletion"``, ``"insertion:xplique"``).
        metric_options: ``{metric key: {option: value}}``.

    Raises:
        MethodError: An unknown method.
        MetricError: An unknown or method-based metric, preset or option.
        ConvlensError: ``data`` does not exist, or has no labels while ``group_by="label"``.

    Example:
        >>> check_request("photos/", method="gradcam", group_by="predicted")  # doctest: +SKIP
    """
    get_method(method)
    parse_audit_metrics(list(metrics), metric_options)
    check_grouping(data, group_by, detect_layout(data))  # a missing DATA, too
