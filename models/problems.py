"""Why a webhook cannot become a request, as the domain sees it (the HTTP edge maps each to
its status code: ``streams.ingress.HTTP_STATUS``)."""

from __future__ import annotations

from enum import StrEnum


class Problem(StrEnum):
    UNREADABLE = "unreadable"  # broken JSON, form or multipart; nesting too deep
    UNAUTHENTIC = "unauthentic"  # a missing or wrong signature
    TOO_LARGE = "too_large"  # over the body limit
    TOO_SLOW = "too_slow"  # the body did not arrive in time
    UNSUPPORTED = "unsupported"  # neither JSON nor form data, or a form not in UTF-8
    UNIMPLEMENTED = "unimplemented"  # sent in a transfer coding other than chunked
    INVALID = "invalid"  # readable, but the params break the contract
