"""The one error type of the HTTP service: a status and one line, answered as {"error": "one line"}."""

from __future__ import annotations

from starlette.responses import JSONResponse

from facerec.errors import FacerecError


class ServiceError(FacerecError):
    """A request that cannot be answered as asked: `status` is its HTTP status, the message one line."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """{"error": message}, the message flattened to one line."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)
