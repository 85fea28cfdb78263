"""The exceptions cafs raises.

One hierarchy for the whole project: the front ends map it once at their edge
(FUSE to an errno, gRPC to a status code, the CLI to a one-line message and
exit code 1). "Not found" is not an error: lookups return ``None``.
"""

from __future__ import annotations

import re


class CafsError(Exception):
    """Base of every error cafs raises on purpose."""


class InvalidAddressError(CafsError):
    """A service URL that cafs cannot turn into a service.

    Secrets a URL may carry (an object store's keys, tokens) are not repeated
    in the message, which ends up in logs.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"invalid service address {redact(url)!r}: {reason}")
        self.url = url
        self.reason = reason


_SECRET = re.compile(
    r"((?:aws_)?(?:secret[a-z_]*|session_token|token|password|account_key|sas_key|"
    r"service_account_key|bearer_token|client_secret)=)[^&]*",
    re.IGNORECASE,
)


def redact(url: str) -> str:
    """``url`` with the values of secret query options replaced by ``…``."""
    return _SECRET.sub(r"\1…", url)


class ValidationError(CafsError):
    """Data that breaks a rule of the data model (names, digests, sizes, order)."""


class InvalidDigestError(ValidationError):
    """A digest of the wrong length or an unparseable digest string."""


class DirectoryValidationError(ValidationError):
    """A Directory message that breaks one of the Directory rules."""


class ClosureError(ValidationError):
    """A set of directories that does not form one valid closure."""


class IntegrityError(CafsError):
    """Stored data that does not hash to the digest it is stored under.

    Raised instead of ever returning such data.
    """


class StorageError(CafsError):
    """A backend failed to read or write (disk, database, network)."""


class IngestError(CafsError):
    """A file tree that cannot be imported (unsupported file types, races)."""


class StorePathError(ValidationError):
    """A store path (basename or absolute) that breaks one of Nix's rules."""


class HashFormatError(ValidationError):
    """A Nix hash or content address string that cannot be parsed."""


class SignatureError(ValidationError):
    """A signature or key in Nix's ``name:base64`` form that cannot be parsed."""


class NarInfoError(ValidationError):
    """Narinfo text that cannot be parsed (missing, duplicate or malformed fields)."""


class PathInfoValidationError(ValidationError):
    """A PathInfo that breaks one of the PathInfo rules."""


class NarError(ValidationError):
    """A NAR archive that is malformed or truncated, or that cannot be rendered."""


class RemoteError(StorageError):
    """A remote service failed, refused a request, or could not be reached.

    ``code`` is the gRPC status code's name (``"UNAVAILABLE"``, ...), so
    callers can tell a daemon that is down from one that said no.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
