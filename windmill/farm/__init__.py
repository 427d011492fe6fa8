"""The Animal Farm HTTP client: requests, answer normalisation and failure kinds."""

from windmill.farm.client import (
    DEFAULT_MAX_BODY_BYTES,
    FarmClient,
    HealthResult,
    ServiceAnswer,
    check_services,
    format_health_table,
)
from windmill.farm.errors import PERMANENT_KINDS, RETRYABLE_KINDS, ServiceCallError
from windmill.farm.normalize import error_message, normalize_answer, normalize_score_answer

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "PERMANENT_KINDS",
    "RETRYABLE_KINDS",
    "FarmClient",
    "HealthResult",
    "ServiceAnswer",
    "ServiceCallError",
    "check_services",
    "error_message",
    "format_health_table",
    "normalize_answer",
    "normalize_score_answer",
]
