"""The router's exceptions: one root, specific subclasses."""


class RouterError(Exception):
    """Root of router errors. `code` is what an ack carries to the edge."""

    code = "internal"


class OverloadedError(RouterError):
    code = "overloaded"
