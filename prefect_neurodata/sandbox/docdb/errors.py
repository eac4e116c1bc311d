"""Error responses of the DocDB stand-in (see the shapes listed in ``app.py``).

`run_mongo` lives here too: it is where a MongoDB failure becomes one of these answers, for
reads and writes alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from bson.errors import BSONError
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

logger = logging.getLogger("prefect_neurodata.sandbox.docdb")


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


def run_mongo(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` translating MongoDB failures into the Lambda's 400 answers."""
    try:
        return fn(*args, **kwargs)
    except BulkWriteError:
        raise
    except OperationFailure as exc:
        details = exc.details or {}
        raise mongo_error(str(details.get("errmsg") or exc), exc.code) from None
    except (BSONError, TypeError, ValueError) as exc:
        raise mongo_error(str(exc), None, "MongoInvalidArgumentError") from None
    except PyMongoError as exc:
        logger.warning("MongoDB failed, answering 502: %s", exc)
        raise gateway(502, "Internal server error") from exc


NOT_FOUND_ROUTE = gateway(404, "Not Found")
MISSING_TOKEN = "Missing Authentication Token"
REQUEST_TOO_LONG = gateway(413, "Request Too Long")
