"""Exception types shared by every natib component.

Handlers signal what the runtime should do with a message by the kind of error they raise: a
`RetryableError` is redelivered later, a `PermanentError` is terminated with a domain event.
"""

from __future__ import annotations


class NatibError(Exception):
    """Base class for every error natib raises on purpose."""


class ConfigError(NatibError):
    """A setting (environment variable, flag or file) has a value natib cannot use."""


class ServerError(NatibError):
    """The NATS server could not be found, started, reached or stopped."""


class RetryableError(NatibError):
    """A transient failure: the message is handed back and retried after a delay."""


class PermanentError(NatibError):
    """The message can never succeed, however often it is retried."""
