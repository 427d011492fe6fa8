"""How a call to an Animal Farm service failed, and whether trying again can help.

| kind         | retryable | when                                                               |
|--------------|-----------|--------------------------------------------------------------------|
| `connect`    | yes       | connection refused, DNS failure, no connection within the timeout  |
| `timeout`    | yes       | connected, but no (complete) answer in time; HTTP 408              |
| `network`    | yes       | the connection broke mid-exchange                                  |
| `http_5xx`   | yes       | HTTP 500–599 (but see `refuses_the_upload`, and `rejected`)        |
| `http_429`   | yes       | HTTP 429 (too many requests)                                       |
| `http_4xx`   | no        | any other HTTP 400–499                                             |
| `rejected`   | no        | the service refused the image or the request: HTTP 413, a 400 whose |
|              |           | message is about the image, clip's and xception's 500 "File not    |
|              |           | found" (spec §3.5), `status: "error"` in a 2xx answer              |
| `malformed`  | no        | not JSON, not an object, no predictions, body over the size cap    |
| `http_other` | no        | an unexpected status (1xx, 3xx)                                    |

The worker runtime does the bounded retries; the client only classifies. A worker's calls to a service that is
down (`connect`, HTTP 502/503/504/429) wait for it first, and take their retries only once it has been down too
long (windmill/farm/outages.py).

colors and face answer an upload they cannot decode with HTTP 500 "Failed to process uploaded image: …" (spec
§2.7), which reads as passing. It is not when Windmill encoded the image itself: `refuses_the_upload` names that
answer, and a role that sent its own pixels (a crop) takes it as permanent after one retry (roles/outcome.py).
"""

from __future__ import annotations

from windmill.errors import WindmillError
from windmill.images.errors import one_line

RETRYABLE_KINDS = frozenset({"connect", "timeout", "network", "http_5xx", "http_429"})
PERMANENT_KINDS = frozenset({"http_4xx", "rejected", "malformed", "http_other"})
KINDS = RETRYABLE_KINDS | PERMANENT_KINDS
MAX_MESSAGE_CHARS = 300
_UNDECODABLE_UPLOAD = "Failed to process uploaded image"


class ServiceCallError(WindmillError):
    """A failed service call: `kind` says what happened, `retryable` whether to try again."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        service: str | None = None,
        status_code: int | None = None,
        elapsed: float | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown service error kind {kind!r}")
        self.kind = kind
        self.retryable = kind in RETRYABLE_KINDS
        self.service = service
        self.status_code = status_code
        self.elapsed = elapsed
        self.reason = one_line(message, MAX_MESSAGE_CHARS)
        self.message = f"{service}: {self.reason}" if service else self.reason
        super().__init__(self.message)

    def restated(self, reason: str) -> ServiceCallError:
        """The same failure with this reason (how long its service has been down: windmill/farm/outages.py)."""
        return ServiceCallError(reason, kind=self.kind, service=self.service, status_code=self.status_code,
                                elapsed=self.elapsed)

    @property
    def result_status(self) -> str:
        """The `results.status` this failure records once retries are exhausted: `timeout` or `error`."""
        return "timeout" if self.kind == "timeout" else "error"

    @property
    def refuses_the_upload(self) -> bool:
        """The service answered that it could not decode the uploaded image (colors' and face's HTTP 500)."""
        return self.status_code == 500 and _UNDECODABLE_UPLOAD in self.reason

    def __repr__(self) -> str:
        return f"ServiceCallError({self.message!r}, kind={self.kind!r}, status_code={self.status_code!r})"
