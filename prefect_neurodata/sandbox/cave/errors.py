"""Error types of the CAVE stand-in, rendered by ``app.py`` in the real services' body shapes.

Raise these from any route (or dependency) of the CAVE stand-in:

* ``CaveHTTPError(404, "version 9 not found in minnie_sandbox")`` renders the flask-restx shape
  ``{"message": "..."}`` (materialization, annotation, info, schema, state services).
* ``CaveHTTPError(401, body={...}, headers={...})`` renders an arbitrary JSON body (auth errors).
* ``CaveHTTPError(403, text="Requires superadmin privilege.")`` renders a plain-text body.
* ``PCGError(400, "...")`` renders the PyChunkedGraph shape
  ``{"timestamp", "duration", "code", "message", "traceback"}``.

Example:
    >>> err = CaveHTTPError(404, "table foo not found")
    >>> err.status_code, err.body
    (404, {'message': 'table foo not found'})
"""

from __future__ import annotations

from typing import Any

import orjson


class CaveHTTPError(Exception):
    """An HTTP error with an exact response body.

    Args:
        status_code: HTTP status.
        message: Message; the body becomes ``{"message": message}`` unless ``body`` is given.
        body: Full JSON body to send instead of the default shape.
        headers: Extra response headers (e.g. ``WWW-Authenticate``).
        text: Plain-text body (sent as ``text/html; charset=utf-8`` like flask) instead of JSON.
    """

    def __init__(
        self,
        status_code: int,
        message: str | None = None,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        text: str | None = None,
    ) -> None:
        self.status_code = int(status_code)
        self.message = message if message is not None else ""
        if body is None and text is None:
            body = {"message": self.message}
        self.body = body
        self.text = text
        self.headers = dict(headers or {})
        super().__init__(f"{status_code}: {message if message is not None else body or text}")


class PCGError(CaveHTTPError):
    """A PyChunkedGraph error, rendered as PCG's ``{"timestamp", "code", "message", ...}`` body.

    Args:
        status_code: HTTP status (400 for bad input/preconditions, 404 unknown node, 500 ...).
        message: The human-readable message.
    """

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code, message)
        self.body = None  # filled in at render time (needs the request timing)


def parse_int_list(raw: str, message: str) -> list[int]:
    """Comma-separated integers of a query parameter (blank items skipped), or a 400.

    Args:
        raw: The parameter's text, e.g. ``"1,2, 3"``.
        message: The 400 message when an item is not an integer (the service's wording).

    Example:
        >>> parse_int_list("1, 2,,3", "ids must be integers")
        [1, 2, 3]
    """
    try:
        return [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise CaveHTTPError(400, message) from None


def parse_json_body(raw: bytes, error: type[CaveHTTPError] = CaveHTTPError) -> Any:
    """A request body parsed as JSON, or ``error(400, ...)`` saying why it is not.

    Every CAVE stand-in route that takes a JSON body parses it here, so the services agree on
    what an empty or malformed body gets; ``error`` picks the service's body shape.

    Example:
        >>> parse_json_body(b'{"a": 1}')
        {'a': 1}
        >>> parse_json_body(b"", PCGError)
        Traceback (most recent call last):
        ...
        prefect_neurodata.sandbox.cave.errors.PCGError: 400: Request body must be JSON
    """
    if not raw.strip():
        raise error(400, "Request body must be JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise error(400, f"Request body is not valid JSON: {exc}") from None
