"""Where batch sweeps put their bytes: a tiny object-store interface over a local directory or an S3 bucket.

This module owns the mapping from a store URI (`s3://bucket/prefix`, `file:///abs/dir` or a plain path) to a
`Store`, the atomicity of each write, and the translation of every storage failure a user can meet into a
`StoreError` whose message is one sentence naming the URI and what to do. No Ray here: sweeps call it from
wherever they run, so a `Store` is cheap to build, touches nothing until used, and pickles.

Keys are relative, `/`-separated and portable between backends ("samples/abc/image.png"): no leading `/`, no
empty, `.` or `..` segments. A missing key read raises `FileNotFoundError` on both backends.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import re
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

ACCEPTED_FORMS = "s3://bucket[/prefix], file:///absolute/path, or a local path"
PROBE_PREFIX = "_probe/"

# Production defaults: a multi-MB PUT over a busy link can take tens of seconds, and the standard retry mode
# backs off between attempts, so 5 attempts ride out a brief S3 brown-out without stalling a sweep for long.
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_MAX_ATTEMPTS = 5
READ_TIMEOUT_ENV = "IMGSOUND_S3_READ_TIMEOUT_S"
CONNECT_TIMEOUT_ENV = "IMGSOUND_S3_CONNECT_TIMEOUT_S"
MAX_ATTEMPTS_ENV = "IMGSOUND_S3_MAX_ATTEMPTS"

# In-flight local writes are hidden files with this suffix; `list` skips them and keys may not end with it.
_TEMP_SUFFIX = ".imgsound-partial"
# AWS bucket naming rules (the general-purpose subset every region accepts).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# S3 error codes, grouped by what the user has to do about them.
_MISSING_BUCKET_CODES = {"NoSuchBucket"}
_DENIED_CODES = {"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"}
_BAD_CREDENTIALS_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
_REASON_MAX_CHARS = 160


LOG = logging.getLogger("imgsound.store")


class StoreError(RuntimeError):
    """A storage failure the user can act on; the message is one sentence naming the URI and the remedy."""


def check_key(key: str) -> str:
    """Return `key` if it is a valid relative key, else raise ValueError (a caller bug, not a storage failure).

    Valid: non-empty, `/`-separated, no leading `/`, no empty/`.`/`..` segments, no backslash or NUL, and not
    ending with the temporary-file suffix. The same rule on both backends keeps keys portable between them.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"store key must be a non-empty string, got {key!r}")
    if key.startswith("/") or "\\" in key or "\0" in key:
        raise ValueError(f"store key must be relative and '/'-separated, got {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"store key may not contain empty, '.' or '..' segments (it would escape or alias): {key!r}")
    if key.endswith(_TEMP_SUFFIX):
        raise ValueError(f"store keys may not end with {_TEMP_SUFFIX!r} (reserved for in-flight writes): {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    """A list prefix is a key or the start of one: "" (everything), "samples/" or "samples/ab" are all valid."""
    if prefix == "":
        return prefix
    head, _, last = prefix.rpartition("/")
    if head:
        check_key(head)
    if prefix.startswith("/") or "\\" in prefix or "\0" in prefix or last in (".", ".."):
        raise ValueError(f"store list prefix must be relative and may not contain '.' or '..' segments: {prefix!r}")
    return prefix


def _probe_key() -> str:
    """Unique per host, process and call, so concurrent checks from many workers never collide."""
    return f"{PROBE_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"


class Store(ABC):
    """Bytes under relative keys below a root URI.

    Contracts shared by every backend: `put_bytes` is atomic (a reader sees the old object, no object, or the
    whole new one, never a part) and returns `uri_for(key)`; `get_bytes` of a missing key raises
    FileNotFoundError; `delete` of a missing key is a no-op; `list` is recursive and returns relative keys,
    sorted. Storage failures raise StoreError; malformed keys raise ValueError.
    """

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> str:
        """Write `data` at `key` atomically, replacing any previous object; return the object's full URI."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The bytes at `key`; FileNotFoundError if there is no such object."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""

    def get_head(self, key: str, size: int) -> bytes:
        """The first `size` bytes at `key` (all of it when shorter): enough to tell a file's format."""
        return self.get_bytes(key)[:size]

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix` (a plain string prefix, as in S3), recursive and sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at `key`, if any."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove the objects at `keys` (missing ones are no-ops); backends with a batch call use it."""
        for key in keys:
            self.delete(key)

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """The full URI the object at `key` has (or would have)."""

    def check_writable(self) -> None:
        """Write, read back and delete a small uniquely named probe under `_probe/`; StoreError if any step fails.

        Sweeps call this before starting any work, so a wrong URI, a missing bucket or absent permissions fail
        in seconds rather than after the first batch has been computed.
        """
        key = _probe_key()
        payload = f"imgsound write check {key}\n".encode()
        self.put_bytes(key, payload)
        try:
            try:
                read_back = self.get_bytes(key)
            except FileNotFoundError:
                raise StoreError(
                    f"A probe written to {self.uri_for(key)} could not be read back: check that {self.uri} is not "
                    "a write-only location."
                ) from None
            if read_back != payload:
                raise StoreError(
                    f"A probe written to {self.uri_for(key)} read back different bytes: check that nothing else "
                    f"rewrites objects under {self.uri}."
                )
        except BaseException:
            # Best effort: the failure being reported matters more than a stray probe object.
            try:
                self.delete(key)
            except (StoreError, OSError):
                pass
            raise
        self.delete(key)
        self._remove_probe_folder()

    def _remove_probe_folder(self) -> None:  # noqa: B027 - a hook: most backends have nothing to do
        """Backends with real folders remove the emptied `_probe/` (object stores have none to remove)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(Store):
    """A directory tree: key "a/b.png" is the file ROOT/a/b.png; URIs are `file:///abs/path`.

    Writes go to a hidden temporary file in the destination directory, are fsynced, then `os.replace`d over
    the destination: the rename is atomic on POSIX, so readers (and a crash) never leave a partial object.
    """

    def __init__(self, root: Path | str) -> None:
        # Absolute now, so the URI and every path stay valid if the process later changes directory.
        self.root = Path(os.path.abspath(os.path.expanduser(root)))
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def _remove_probe_folder(self) -> None:
        # Only if empty: another process may be probing the same store right now.
        with contextlib.suppress(OSError):
            (self.root / PROBE_PREFIX.rstrip("/")).rmdir()

    def _error(self, action: str, key: str, err: OSError) -> StoreError:
        reason = err.strerror or type(err).__name__
        return StoreError(
            f"Could not {action} {self.uri_for(key)} ({reason}): check that {self.root} is a writable directory "
            "on a disk with free space."
        )

    def put_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        # The name is truncated so that the temporary name stays within NAME_MAX (255) for long key names.
        temp = path.with_name(f".{path.name[:150]}.{uuid.uuid4().hex}{_TEMP_SUFFIX}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL on a unique name: never clobber another writer's temp file; 0o666 lets the umask decide
            # permissions exactly as for an ordinary file (mkstemp would force 0o600).
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    # Durable before visible: without this a crash after the rename can leave an empty file.
                    os.fsync(out.fileno())
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        except OSError as err:
            raise self._error("write", key, err) from None
        return path.as_uri()

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(f"no object at {self.uri_for(key)}") from None
        except OSError as err:
            raise self._error("read", key, err) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def get_head(self, key: str, size: int) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as file:
                return file.read(size)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(f"no object at {self.uri_for(key)}") from None
        except OSError as err:
            raise self._error("read", key, err) from None

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        # Walk only the directory the prefix names, then filter by the string prefix like S3 does.
        directory = prefix[: prefix.rfind("/") + 1]
        base = self.root.joinpath(*directory.split("/")[:-1]) if directory else self.root

        def raise_unless_vanished(err: OSError) -> None:
            # A directory deleted while walking is simply empty; anything else would silently shorten the list.
            if not isinstance(err, FileNotFoundError | NotADirectoryError):
                raise err

        keys: list[str] = []
        try:
            for dirpath, _dirnames, filenames in os.walk(base, onerror=raise_unless_vanished):
                relative_dir = Path(dirpath).relative_to(self.root).as_posix()
                for name in filenames:
                    if name.startswith(".") and name.endswith(_TEMP_SUFFIX):
                        continue
                    key = name if relative_dir == "." else f"{relative_dir}/{name}"
                    if key.startswith(prefix):
                        keys.append(key)
        except OSError as err:
            raise StoreError(
                f"Could not list {self.uri} ({err.strerror or type(err).__name__}): check that {self.root} is a "
                "readable directory."
            ) from None
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            return  # a directory is not an object (as in S3, where deleting a "folder" key removes nothing)
        try:
            path.unlink(missing_ok=True)
        except NotADirectoryError:
            return
        except OSError as err:
            raise self._error("delete", key, err) from None


def _setting(value: float | None, env: str, default: float, kind: type, minimum: float) -> Any:
    """An explicit argument, else the environment variable `env`, else the production default."""
    if value is not None:
        if value < minimum:
            raise ValueError(f"{env.removeprefix('IMGSOUND_S3_').lower()} must be >= {minimum}, got {value}")
        return kind(value)
    raw = os.environ.get(env, "").strip()
    if not raw:
        return kind(default)
    try:
        parsed = kind(raw)
    except ValueError:
        parsed = None
    if parsed is None or parsed < minimum:
        raise StoreError(
            f"{env}={raw!r} is not a valid {'count' if kind is int else 'number of seconds'} (at least {minimum}): "
            "fix or unset it."
        )
    return parsed


class S3Store(Store):
    """Objects under `s3://bucket/prefix/`, through boto3's standard credential chain.

    The endpoint is `endpoint_url`, else whatever boto3 resolves (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the
    config file, then AWS). Timeouts and the total number of attempts per request are the arguments, else
    IMGSOUND_S3_READ_TIMEOUT_S / IMGSOUND_S3_CONNECT_TIMEOUT_S / IMGSOUND_S3_MAX_ATTEMPTS, else production
    defaults. The client is built on first use and dropped when pickled, so a store is cheap and can be shipped
    to worker processes. A put that failed on a timeout may still land later: PUTs are idempotent, so callers
    simply retry the same key.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        read_timeout_s: float | None = None,
        connect_timeout_s: float | None = None,
        max_attempts: int | None = None,
    ) -> None:
        check_bucket_name(bucket)
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except ValueError:
                raise StoreError(
                    f"The S3 prefix {prefix!r} of bucket {bucket!r} has an empty, '.' or '..' segment: use a plain "
                    "path such as 'runs/2024-06-01'."
                ) from None
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url or None
        self.read_timeout_s = float(_setting(read_timeout_s, READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT_S, float, 0.001))
        self.connect_timeout_s = float(
            _setting(connect_timeout_s, CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S, float, 0.001)
        )
        self.max_attempts = int(_setting(max_attempts, MAX_ATTEMPTS_ENV, DEFAULT_MAX_ATTEMPTS, int, 1))
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._client_instance: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client_instance"] = None  # boto3 clients do not pickle; the receiver builds its own
        return state

    @property
    def _client(self) -> Any:
        if self._client_instance is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise StoreError(f"{self.uri} needs boto3, which is not installed: pip install boto3.") from None
            config = Config(
                connect_timeout=self.connect_timeout_s,
                read_timeout=self.read_timeout_s,
                # total_max_attempts counts the first try; the `max_attempts` key would count retries only.
                retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
            )
            # A session per store: boto3's default session is shared module state and not thread-safe.
            client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)
            client.meta.events.register_first("needs-retry.s3", self._log_retry)
            self._client_instance = client
        return self._client_instance

    def _log_retry(self, attempts: int, response=None, caught_exception=None, operation=None, **_: Any) -> None:
        """Log each failed attempt that botocore is about to retry (throttling, 5xx, a reset connection), so that
        retries show in a sweep's log; returns None, leaving the decision to botocore's own handler."""
        if attempts >= self.max_attempts:
            return None  # the last attempt: its error reaches the caller as a StoreError
        if caught_exception is not None:
            reason = type(caught_exception).__name__
        elif response is not None and response[0].status_code >= 500:
            reason = f"{response[1].get('Error', {}).get('Code', 'HTTP')} {response[0].status_code}"
        else:
            return None
        name = getattr(operation, "name", "request")
        LOG.warning(
            "storage: %s to %s failed (%s), attempt %d of %d; retrying",
            name,
            self.uri,
            reason,
            attempts,
            self.max_attempts,
        )
        return None

    @property
    def resolved_endpoint(self) -> str:
        """The endpoint requests go to, after boto3 applied the argument, environment and config file."""
        return str(self._client.meta.endpoint_url)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _store_error(self, err: Exception, action: str, uri: str) -> StoreError:
        """One sentence for a botocore failure: what happened to which URI, and what to do about it."""
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            CredentialRetrievalError,
            EndpointConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        endpoint = self.resolved_endpoint
        if isinstance(err, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            return StoreError(
                f"No usable AWS credentials to {action} {uri} ({type(err).__name__}): set AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run with an IAM role."
            )
        if isinstance(err, BotoConnectionError | HTTPClientError):
            if isinstance(err, ReadTimeoutError):
                reason = f"no answer within {self.read_timeout_s:g} s"
            elif isinstance(err, ConnectTimeoutError):
                reason = f"no connection within {self.connect_timeout_s:g} s"
            elif isinstance(err, EndpointConnectionError):
                reason = "connection failed"
            else:
                reason = type(err).__name__
            return StoreError(
                f"Could not reach the S3 endpoint {endpoint} to {action} {uri} ({reason}, {self.max_attempts} "
                f"attempts): check the endpoint URL and the network, or raise {READ_TIMEOUT_ENV} / "
                f"{MAX_ATTEMPTS_ENV} for a slow link."
            )
        if isinstance(err, ClientError):
            code = _error_code(err)
            if code in _MISSING_BUCKET_CODES:
                return StoreError(
                    f"The S3 bucket {self.bucket!r} does not exist at {endpoint}: create it or fix the store URI "
                    f"{self.uri}."
                )
            if code in _DENIED_CODES:
                return StoreError(
                    f"Access denied to {action} {uri}: grant these credentials s3:PutObject, s3:GetObject, "
                    f"s3:DeleteObject and s3:ListBucket on bucket {self.bucket!r}, or use another bucket."
                )
            if code in _BAD_CREDENTIALS_CODES:
                return StoreError(
                    f"S3 at {endpoint} rejected the credentials used to {action} {uri} ({code}): check AWS_PROFILE "
                    "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and refresh expired session tokens."
                )
            message = str(err.response.get("Error", {}).get("Message", "")).strip()
            reason = f"{code}: {message}" if message else code
            return StoreError(
                f"S3 at {endpoint} refused to {action} {uri} ({reason[:_REASON_MAX_CHARS]}): check the bucket's "
                "policy and settings."
            )
        reason = f"{type(err).__name__}: {err}"[:_REASON_MAX_CHARS]
        return StoreError(f"Could not {action} {uri} through S3 at {endpoint} ({reason}): check the S3 settings.")

    @contextmanager
    def _translated(self, action: str, uri: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as err:
            # `from None`: the sentence is the whole story for the user; the botocore error stays on __context__.
            raise self._store_error(err, action, uri) from None

    def put_bytes(self, key: str, data: bytes) -> str:
        uri = self.uri_for(key)
        # A single PUT is atomic in S3: readers see the old object or the whole new one.
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        with self._translated("write", uri):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data), ContentType=content_type)
        return uri

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        uri = self.uri_for(key)
        with self._translated("read", uri):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as err:
                if _error_code(err) in _MISSING_KEY_CODES:
                    raise FileNotFoundError(f"no object at {uri}") from None
                raise
            with response["Body"] as body:
                return body.read()

    def get_head(self, key: str, size: int) -> bytes:
        from botocore.exceptions import ClientError

        uri = self.uri_for(key)
        with self._translated("read", uri):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{size - 1}")
            except ClientError as err:
                if _error_code(err) in _MISSING_KEY_CODES:
                    raise FileNotFoundError(f"no object at {uri}") from None
                if _error_code(err) == "InvalidRange":  # an empty object
                    return b""
                raise
            with response["Body"] as body:
                return body.read()

    def exists(self, key: str) -> bool:
        """Whether the object exists. HEAD answers a bare 404 for a missing bucket too, so that reads as False
        here; `check_writable` (or any write) is what reports a missing bucket."""
        from botocore.exceptions import ClientError

        uri = self.uri_for(key)
        with self._translated("check", uri):
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as err:
                if _error_code(err) in _MISSING_KEY_CODES:
                    return False
                raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        # The store prefix ends with "/" so that listing s3://b/run1 never picks up s3://b/run10/...
        root = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        with self._translated("list", self.uri):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                keys.extend(item["Key"][len(root) :] for item in page.get("Contents", ()))
        return sorted(keys)

    def delete(self, key: str) -> None:
        uri = self.uri_for(key)
        with self._translated("delete", uri):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        # DeleteObjects takes up to 1000 keys a request: compaction deletes thousands of parts in a few requests.
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            with self._translated("delete", self.uri):
                answer = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
            failed = answer.get("Errors", [])
            if failed:
                first = failed[0]
                raise StoreError(
                    f"could not delete {len(failed)} objects under {self.uri} "
                    f"(first: {first.get('Key')}: {first.get('Code')} {first.get('Message', '')})".rstrip()
                )


def _error_code(err: Any) -> str:
    """The S3 error code of a ClientError ("NoSuchBucket", or the bare HTTP status for body-less HEAD answers)."""
    return str(err.response.get("Error", {}).get("Code", ""))


def check_bucket_name(bucket: str, uri: str | None = None) -> str:
    """Return `bucket` if it follows the S3 naming rules, else raise StoreError (naming `uri` when given)."""
    if (
        not _BUCKET_RE.fullmatch(bucket)
        or ".." in bucket
        or ".-" in bucket
        or "-." in bucket
        or _IP_RE.fullmatch(bucket)
    ):
        where = f"The store URI {uri!r} names {bucket!r}, which" if uri else f"{bucket!r}"
        raise StoreError(
            f"{where} is not a valid S3 bucket name: use 3-63 lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit and not shaped like an IP address."
        )
    return bucket


def open_store(uri: str, endpoint_url: str | None = None) -> Store:
    """The store for `uri`: `s3://bucket[/prefix]`, `file:///abs/path`, or a plain local path.

    A plain path, absolute or relative (to the current directory, resolved now), is a LocalStore; a path that
    looks like `scheme:...` must be written `./scheme:...`. `endpoint_url` applies to S3 only. Nothing is
    contacted or created here: `Store.check_writable` is the check that the store actually works. Raises
    StoreError naming the URI and the accepted forms for anything else.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise StoreError(f"The store URI {uri!r} is empty: give one of {ACCEPTED_FORMS}.")
    scheme_match = _SCHEME_RE.match(uri)
    if scheme_match is None:
        return LocalStore(Path(uri))
    scheme = scheme_match.group(1).lower()
    if scheme == "s3":
        if not uri[3:].startswith("//"):
            raise StoreError(f"The store URI {uri!r} is malformed: write s3://bucket[/prefix].")
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise StoreError(f"The store URI {uri!r} names no bucket: write s3://bucket[/prefix].")
        if "?" in uri or "#" in uri:
            raise StoreError(f"The store URI {uri!r} has a query or fragment: write s3://bucket[/prefix] only.")
        check_bucket_name(bucket, uri)
        if any(part in ("", ".", "..") for part in prefix.strip("/").split("/")) and prefix.strip("/"):
            raise StoreError(
                f"The store URI {uri!r} has an empty, '.' or '..' segment in its prefix: write s3://bucket/a/b."
            )
        return S3Store(bucket, prefix, endpoint_url=endpoint_url)
    if scheme == "file":
        parsed = urlparse(uri)
        if not uri[5:].startswith("//") or parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise StoreError(
                f"The store URI {uri!r} is not a local file URI: write file:///absolute/path (three slashes) or "
                "a plain path."
            )
        return LocalStore(Path(unquote(parsed.path)))
    raise StoreError(f"The store URI {uri!r} has the unsupported scheme {scheme!r}: give one of {ACCEPTED_FORMS}.")
