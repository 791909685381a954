"""The edge's exceptions: one root, specific subclasses."""


from services.common.errors import ErrorCode, rule_of


class EdgeError(Exception):
    """Root of edge errors. `code` (an ErrorCode value) is what clients see in error events and
    HTTP bodies; `retryable` and `http_status` come from the one table in common/errors.py."""

    code: str = ErrorCode.INTERNAL

    @property
    def retryable(self) -> bool:
        return rule_of(self.code).retryable

    @property
    def http_status(self) -> int:
        return rule_of(self.code).http_status


class UpstreamUnavailableError(EdgeError):
    """No router or history node could take the request in time: retry later."""

    code = ErrorCode.UNAVAILABLE


class PublishTimeoutError(EdgeError):
    """Not acknowledged within the publish deadline (it may still be stored: retry with the id)."""

    code = ErrorCode.TIMEOUT


class PublishRejectedError(EdgeError):
    """The router or history refused the publish (invalid, overloaded, busy)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
