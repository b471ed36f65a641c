"""Errors that reach the client with a 4xx status and a message that says what to fix.

MONAI Label turns any other exception into a bare 500; raising ``ClientError`` (a FastAPI
``HTTPException``) from a task, the datastore or the app is how SegLoop reports the client's fault.
"""

from fastapi import HTTPException


class ClientError(HTTPException):
    """A request the server cannot serve because of what the client sent (or asked too early)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code=status_code, detail=message)

    @property
    def message(self) -> str:
        return str(self.detail)


def bad_request(message: str) -> ClientError:
    return ClientError(400, message)


def not_found(message: str) -> ClientError:
    return ClientError(404, message)


def conflict(message: str) -> ClientError:
    return ClientError(409, message)


def unprocessable(message: str) -> ClientError:
    return ClientError(422, message)


def too_large(message: str) -> ClientError:
    return ClientError(413, message)
