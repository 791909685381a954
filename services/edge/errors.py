"""The edge's exceptions: one root, specific subclasses."""


class EdgeError(Exception):
    """Root of edge errors. `code` is what clients see in error events and HTTP bodies."""

    code = "internal"


class UpstreamUnavailableError(EdgeError):
    """No router or history node could take the request in time: retry later."""

    code = "unavailable"


class PublishRejectedError(EdgeError):
    """The router or history refused the publish (invalid, overloaded)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
