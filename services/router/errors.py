"""The router's exceptions: one root, specific subclasses."""


from services.common.errors import ErrorCode


class RouterError(Exception):
    """Root of router errors. `code` (an ErrorCode value) is what an ack carries to the edge."""

    code: str = ErrorCode.INTERNAL


class InvalidPublishError(RouterError):
    code = ErrorCode.INVALID


class OverloadedError(RouterError):
    code = ErrorCode.OVERLOADED
