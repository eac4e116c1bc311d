"""Error responses of the DocDB stand-in (see the shapes listed in ``app.py``)."""

from __future__ import annotations

from typing import Any

import orjson


class ApiError(Exception):
    """An error answer: HTTP status plus a JSON body and optional extra headers."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        self.headers = headers or {}

    def encode(self) -> bytes:
        """The JSON body."""
        return orjson.dumps(self.body)


def gateway(status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    """An API Gateway answer: ``{"message": ...}``."""
    return ApiError(status, {"message": message}, headers)


def bad_request(detail: str) -> ApiError:
    """Invalid parameters or body, caught by the Lambda before MongoDB sees it."""
    return ApiError(400, {"error": "BadRequest", "detail": detail})


def mongo_error(detail: str, code: int | None = None, name: str = "MongoServerError") -> ApiError:
    """A MongoDB driver/server error surfaced by the Lambda (400, error name first)."""
    body: dict[str, Any] = {"error": name, "detail": detail}
    if code is not None:
        body["code"] = code
    return ApiError(400, body)


def not_found(detail: str) -> ApiError:
    """An unknown record or asset (admin routes)."""
    return ApiError(404, {"error": "NotFound", "detail": detail})


NOT_FOUND_ROUTE = gateway(404, "Not Found")
MISSING_TOKEN = "Missing Authentication Token"
REQUEST_TOO_LONG = gateway(413, "Request Too Long")
