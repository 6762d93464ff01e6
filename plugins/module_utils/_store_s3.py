# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A backup store in an S3-compatible bucket, through boto3 (private).

A backup is the objects under ``<prefix><id>/``; it counts once ``<prefix><id>/manifest.json``
exists, which is uploaded last, after every other object was streamed back and hashed. An upload in
progress carries ``<prefix><id>/.run.json`` (its run record) until it is complete. Works with AWS S3
and with S3-compatible servers (MinIO, Ceph RGW, moto), addressed path-style with an endpoint URL.

Object Lock. A bucket with Object Lock is versioned; a retention period (the bucket's default or the
object's) or a legal hold protects each object *version*. What the servers answer (AWS S3, MinIO and
moto alike): a plain DELETE (no version id) succeeds and only adds a delete marker, the locked
version staying until its date; deleting the locked version is refused, per key in DeleteObjects'
``Errors``: AWS and moto ``AccessDenied`` "Access Denied because object protected by object lock.",
MinIO ``InvalidRequest`` "Object is WORM protected and cannot be overwritten". An upload into a
bucket with a default retention needs a checksum header (AWS ``InvalidRequest`` "Content-MD5 OR
x-amz-checksum- HTTP header is required for Put Object requests with Object Lock parameters", moto
``MissingUploadObjectWithObjectLockHeaders``).

So, here:

- uploads carry ``Content-MD5`` (single requests) or ``x-amz-checksum-sha256`` (the transfer
  manager's multipart uploads) when the bucket has Object Lock, or when the server asked for one;
  never otherwise (some S3-compatible servers reject checksum headers they do not know);
- a backup is deleted only when none of its objects is locked (``deletion_refusal``: HEAD each
  object, ``ObjectLockRetainUntilDate`` still ahead or ``ObjectLockLegalHoldStatus`` ON). Hiding a
  locked backup behind delete markers would free nothing (the locked data stays, billed) and would
  make a backup that still exists, and can be restored, invisible; so it is refused, whole, with the
  lock's date, and ``_retention`` keeps and reports it. The first run after the date deletes it;
- when the lock cannot be read (no ``s3:GetObjectRetention``) and the server refuses a deletion
  anyway (a lock, a WORM server, a bucket policy): the manifest goes first, as always (a deletion cut
  short never leaves a backup that counts with data missing). When the manifest itself is refused,
  nothing was deleted; when the data is refused and none of it was deleted, the manifest is put back,
  so the backup is whole again and counts; only when the server refused some data objects and took
  others is the backup left partly deleted, no longer counting, and said so. A refusal raises
  ``GaleraError`` with ``refused=True``, ``whole`` (whether the backup is still complete), ``reason``
  and ``until``; it is not retried (botocore retries only throttling and transient errors), and
  each run asks once.

Deleting never removes object versions: on a versioned bucket, a lifecycle rule
(NoncurrentVersionExpiration) frees the space of deleted backups.

A streamed backup's files are written by ``S3Writer`` under ``<prefix><id>/`` beside its run record:
a file smaller than one part in one PUT, a stream as a multipart upload whose parts (16 MiB or more,
sized from the expected size so that 10 000 parts hold it, doubled every 1000 parts) are sent by a
thread while the next one fills, so at most three parts are in memory. An aborted stream aborts its
multipart upload; one left by a process that died is aborted when retention deletes that unfinished
backup (``_discard_uploads``). A lifecycle rule AbortIncompleteMultipartUpload catches the rest.
"""

from __future__ import annotations

import base64
import hashlib
import os
import queue
import threading
import traceback
from datetime import datetime, timezone

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.dbtools.galera.plugins.module_utils import _stores
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

# boto3 is imported when the first S3 store is set up: most runs use no S3 store, and importing it takes
# longer than the rest of a module's start (a start on a Synced node under load makes it lag).
boto3 = botocore = TransferConfig = BotoConfig = None  # pylint: disable=invalid-name


def _import_boto3() -> str | None:
    """Import boto3 and botocore into this module's globals; the traceback when they are missing."""
    global boto3, botocore, TransferConfig, BotoConfig  # pylint: disable=global-statement,invalid-name
    if boto3 is not None:
        return None
    try:
        import boto3 as _boto3  # pylint: disable=import-outside-toplevel
        import botocore.exceptions  # pylint: disable=import-outside-toplevel,redefined-outer-name
        from boto3.s3.transfer import TransferConfig as _TransferConfig  # pylint: disable=import-outside-toplevel
        from botocore.config import Config as _BotoConfig  # pylint: disable=import-outside-toplevel
    except ImportError:
        return traceback.format_exc()
    boto3, TransferConfig, BotoConfig = _boto3, _TransferConfig, _BotoConfig
    return None


MANIFEST, RUN_RECORD, UNTOUCHED = _stores.MANIFEST, _stores.RUN_RECORD, _stores.UNTOUCHED
MULTIPART = 16 * 1024 * 1024
MAX_PART = 5 * 1024 * 1024 * 1024  # S3's largest part
# GetObjectLockConfiguration answers that mean "this bucket (or this server) has no Object Lock".
NO_LOCK_CODES = ("ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration", "NotImplemented",
                 "MethodNotAllowed", "501", "405")
_UNKNOWN = object()


def _error_of(exc):
    """The botocore ClientError in ``exc`` or what it was raised from (boto3's transfer manager wraps
    it in S3UploadFailedError), or None."""
    seen = 0
    while exc is not None and seen < 5:
        if boto3 is not None and isinstance(exc, botocore.exceptions.ClientError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _code_and_message(error) -> tuple:
    answer = error.response.get("Error", {}) if error is not None else {}
    return str(answer.get("Code", "")), str(answer.get("Message", ""))


def wants_lock_checksum(exc) -> bool:
    """True when an upload failed because the bucket's Object Lock wants a checksum header."""
    code, message = _code_and_message(_error_of(exc))
    return code == "MissingUploadObjectWithObjectLockHeaders" or (
        code == "InvalidRequest" and ("Content-MD5" in message or "x-amz-checksum" in message))


def is_refusal(code: str, message: str) -> bool:
    """True when a deletion's error says the server will not delete that object (Object Lock, a WORM
    server, a bucket policy), rather than that something is broken."""
    if code in ("AccessDenied", "ObjectLocked", "403"):
        return True
    text = message.lower()
    words = ("worm", "object lock", "retention", "legal hold", "locked")
    return code == "InvalidRequest" and any(word in text for word in words)


def _utc(moment) -> datetime | None:
    if isinstance(moment, datetime):
        return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    if isinstance(moment, str) and moment:
        try:
            return _utc(datetime.fromisoformat(moment.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def part_size(number: int, base: int) -> int:
    """The size of part ``number`` (from 1) of a streamed upload: ``base``, doubled every 1000 parts
    (S3 allows 10 000 parts of at most 5 GiB; all but the last at least 5 MiB)."""
    return min(MAX_PART, base << ((number - 1) // 1000))


def base_part_size(size_hint: int | None, least: int = MULTIPART) -> int:
    """The first parts' size: at least ``least``, enough for 5000 parts to hold ``size_hint``, whole MiB."""
    wanted = -(-int(size_hint or 0) // 5000)
    mib = 1024 * 1024
    return max(least, -(-wanted // mib) * mib)


class S3Writer:
    """One file of a streamed backup in the bucket (see ``_stores``' writers): one PUT when it is
    smaller than a part, else a multipart upload fed by a thread."""

    def __init__(self, store, key: str, size_hint: int | None = None):
        self.store, self.key = store, key
        self.base = base_part_size(size_hint, store.stream_part_size)
        self.buffer = bytearray()
        self.upload_id = None
        self.parts = {}
        self.number = 0
        self.error = None
        self.queue = queue.Queue(maxsize=1)
        self.thread = None
        self.done = False

    def _what(self) -> str:
        return f"streaming s3://{self.store.bucket}/{self.key}"

    def _start(self) -> None:
        extra = dict(self.store.extra)
        answer = self.store.call(self._what(), self.store.client.create_multipart_upload, Bucket=self.store.bucket,
                                 Key=self.key, **extra)
        self.upload_id = answer["UploadId"]
        self.thread = threading.Thread(target=self._sender, daemon=True)
        self.thread.start()

    def _sender(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            number, data = item
            if self.error is not None:
                continue  # drain what is queued; the writer raises the first error

            def send(checksum, number=number, data=data):
                extra = {}
                if checksum:
                    extra["ContentMD5"] = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
                return self.store.client.upload_part(Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
                                                     PartNumber=number, Body=data, **extra)
            try:
                answer = self.store.call(f"{self._what()} (part {number})", self.store._upload, send)
                self.parts[number] = answer["ETag"]
            except BaseException as exc:  # pylint: disable=broad-except  # raised by the writer
                self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error if isinstance(self.error, GaleraError) else GaleraError(f"{self._what()}: {self.error}")

    def _queue_part(self, data: bytes) -> None:
        if self.upload_id is None:
            self._start()
        self.number += 1
        while True:  # never block for ever behind a sender that failed
            self._raise()
            try:
                self.queue.put((self.number, data), timeout=1.0)
                return
            except queue.Full:
                continue

    def write(self, data: bytes) -> None:
        self._raise()
        self.buffer += data
        while len(self.buffer) >= part_size(self.number + 1, self.base):
            size = part_size(self.number + 1, self.base)
            chunk = bytes(self.buffer[:size])
            del self.buffer[:size]
            self._queue_part(chunk)

    def close(self) -> None:
        if self.upload_id is None:
            self.store.put_bytes(self.key, bytes(self.buffer))
            self.done = True
            return
        if self.buffer:
            self._queue_part(bytes(self.buffer))
            self.buffer = bytearray()
        self.queue.put(None)
        self.thread.join()
        self._raise()
        parts = [{"ETag": self.parts[n], "PartNumber": n} for n in sorted(self.parts)]
        if len(parts) != self.number:
            raise GaleraError(f"{self._what()}: {self.number - len(parts)} of {self.number} parts were not sent")
        self.store.call(self._what(), self.store.client.complete_multipart_upload, Bucket=self.store.bucket,
                        Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": parts})
        self.done = True

    def abort(self) -> None:
        if self.done or self.upload_id is None:
            return
        if self.thread is not None and self.thread.is_alive():
            self.error = self.error or GaleraError(f"{self._what()}: aborted")
            try:
                self.queue.put(None, timeout=5.0)
            except queue.Full:
                pass
            self.thread.join(timeout=60.0)
        try:
            self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception:  # pylint: disable=broad-except  # never raises; retention catches what is left
            pass
        self.done = True


class S3Store(_stores.Store):
    kind = "s3"
    staging_suffix = ""
    stream_part_size = MULTIPART

    def __init__(self, opts: dict):
        missing = _import_boto3()
        if missing:
            raise GaleraError(missing_required_lib("boto3"), exception=missing)
        self.bucket = opts.get("bucket")
        prefix = opts.get("prefix") or ""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix.lstrip("/")
        self.endpoint_url = opts.get("endpoint_url")
        self.region = opts.get("region")
        self.storage_class = opts.get("storage_class")
        self.name = opts.get("name")
        if not self.bucket:
            raise GaleraError("dest.bucket is required with dest.type=s3. Nothing was changed.")
        if bool(opts.get("access_key")) != bool(opts.get("secret_key")):
            raise GaleraError("give dest.access_key and dest.secret_key together, or neither (then the AWS "
                              "environment, ~/.aws/credentials or an instance role provide them). Nothing was changed.")
        verify = opts["ca_bundle"] if opts.get("ca_bundle") else opts.get("validate_certs", True)
        config = dict(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=20, read_timeout=120)
        if self.endpoint_url:
            config["s3"] = {"addressing_style": "path"}
        try:
            boto_config = BotoConfig(request_checksum_calculation="when_required",
                                     response_checksum_validation="when_required", **config)
        except TypeError:  # botocore before 1.36 has neither option (and computes no extra checksums)
            boto_config = BotoConfig(**config)
        try:
            session = boto3.session.Session(aws_access_key_id=opts.get("access_key") or None,
                                            aws_secret_access_key=opts.get("secret_key") or None,
                                            region_name=self.region or None)
            self.client = session.client("s3", endpoint_url=self.endpoint_url or None, verify=verify,
                                         config=boto_config)
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise GaleraError(f"cannot set up the S3 client: {exc}. Check dest.endpoint_url, dest.region and the AWS "
                              f"configuration. Nothing was changed.")
        self.transfer = TransferConfig(multipart_threshold=MULTIPART, multipart_chunksize=MULTIPART,
                                       max_concurrency=4)
        self.extra = {"StorageClass": self.storage_class} if self.storage_class else {}
        self._object_lock = _UNKNOWN

    def describe(self):
        return dict(type="s3", name=self.name, bucket=self.bucket, prefix=self.prefix,
                    endpoint_url=self.endpoint_url, region=self.region, storage_class=self.storage_class)

    def url(self, name):
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def key(self, name, rel=""):
        return f"{self.prefix}{name}/{rel}"

    # -- errors
    def explain(self, exc, what):
        """A GaleraError for a boto3/botocore exception raised while doing ``what``."""
        where = f"bucket {self.bucket}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return GaleraError(f"{what}: no S3 credentials. Give dest.access_key and dest.secret_key, or set them "
                               f"in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or ~/.aws/credentials "
                               f"of the user running the module. {UNTOUCHED}")
        if isinstance(exc, botocore.exceptions.SSLError):
            return GaleraError(f"{what}: the TLS certificate of {self.endpoint_url or 'S3'} is not trusted ({exc}). "
                               f"Give its CA in dest.ca_bundle (or, for a test server only, "
                               f"dest.validate_certs=false). {UNTOUCHED}")
        if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                            botocore.exceptions.ReadTimeoutError)):
            return GaleraError(f"{what}: cannot reach {self.endpoint_url or 'S3'} ({exc}). Check dest.endpoint_url, "
                               f"the network and any firewall or proxy. {UNTOUCHED}")
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            text = error.get("Message") or str(exc)
            if code in ("NoSuchBucket",):
                fix = f"the bucket {self.bucket} does not exist; create it or fix dest.bucket"
            elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                          "AuthorizationHeaderMalformed"):
                fix = "the server refused the credentials; check dest.access_key, dest.secret_key and dest.region"
            elif code in ("AccessDenied", "403", "AllAccessDisabled"):
                fix = (f"access denied: the credentials need s3:ListBucket, s3:GetObject, s3:PutObject and "
                       f"s3:DeleteObject on {self.bucket}/{self.prefix}*")
            elif code in ("404", "NotFound"):
                fix = f"{self.endpoint_url or 'S3'} answered Not Found; check dest.endpoint_url and dest.bucket"
            elif code in ("InvalidStorageClass",):
                fix = f"the server does not accept storage class {self.storage_class}; fix dest.storage_class"
            else:
                fix = f"the S3 server answered {code or 'an error'}"
            return GaleraError(f"{what} ({where}): {fix} ({text}). {UNTOUCHED}", code=code)
        return GaleraError(f"{what} ({where}): {exc}. {UNTOUCHED}")

    def call(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self.explain(exc, what)
        except Exception as exc:  # boto3's transfer manager wraps failures (S3UploadFailedError, ...)
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)):
                raise self.explain(cause, what)
            if isinstance(exc, OSError) or type(exc).__module__.startswith(("boto3", "botocore", "s3transfer")):
                raise GaleraError(f"{what}: {exc}. {UNTOUCHED}")
            raise

    # -- objects
    def list_keys(self, prefix):
        """{key: size} of every object under ``prefix``."""
        keys = {}
        paginator = self.client.get_paginator("list_objects_v2")

        def walk():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []) or []:
                    keys[item["Key"]] = item.get("Size")
        self.call(f"listing s3://{self.bucket}/{prefix}", walk)
        return keys

    def _stream(self, key, consume):
        """``consume(body)`` of an object, or None when it does not exist."""
        def get():
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return consume(body)
        return self.call(f"reading s3://{self.bucket}/{key}", get)

    def hash_object(self, key):
        def digest(body):
            sha = hashlib.sha256()
            for chunk in body.iter_chunks(_stores.CHUNK):
                sha.update(chunk)
            return sha.hexdigest()
        return self._stream(key, digest)

    def delete_keys(self, keys, what):
        keys = sorted(keys)
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            answer = self.call(what, self.client.delete_objects, Bucket=self.bucket,
                               Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise GaleraError(f"{what}: the server refused to delete {first.get('Key')} ({first.get('Code')}: "
                                  f"{first.get('Message')}); {len(errors)} object(s) not deleted. Check that the "
                                  f"credentials have s3:DeleteObject. {UNTOUCHED}")

    def put_bytes(self, key, data, storage_class=True):
        extra = dict(self.extra) if storage_class else {}

        def send(checksum):
            if checksum:
                extra["ContentMD5"] = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
            return self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        self.call(f"uploading s3://{self.bucket}/{key}", self._upload, send)

    # -- Object Lock
    def object_lock(self) -> bool | None:
        """Whether the bucket has Object Lock enabled: True, False (not enabled, or a server without
        it), None when that cannot be read (no s3:GetBucketObjectLockConfiguration). Asked once."""
        if self._object_lock is _UNKNOWN:
            try:
                answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
            except botocore.exceptions.ClientError as exc:
                self._object_lock = False if _code_and_message(exc)[0] in NO_LOCK_CODES else None
            except botocore.exceptions.BotoCoreError:
                self._object_lock = None
            else:
                config = answer.get("ObjectLockConfiguration") or {}
                self._object_lock = config.get("ObjectLockEnabled") == "Enabled"
        return self._object_lock

    def _upload(self, send):
        """``send(checksum)``: with a checksum header when the bucket has Object Lock; without one
        otherwise, and once more with one when the server says its Object Lock wants it."""
        checksum = self.object_lock() is True
        try:
            return send(checksum)
        except Exception as exc:  # ClientError, or the transfer manager's wrapper of it
            if checksum or not wants_lock_checksum(exc):
                raise
        self._object_lock = True
        return send(True)

    def _lock_of(self, keys, now: datetime | None = None) -> dict | None:
        """``dict(reason, until)`` when one of ``keys`` is locked (a retention date still ahead, or a
        legal hold), None otherwise or when the bucket has no Object Lock. An object whose lock
        cannot be read (gone, or HEAD refused) counts as not locked: the deletion then says."""
        if not keys or self.object_lock() is False:
            return None
        now = now or datetime.now(timezone.utc)
        until, mode, holds = None, None, []

        def head(key):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                if _code_and_message(exc)[0] in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied"):
                    return {}
                raise
        for key in sorted(keys):
            answer = self.call(f"reading the Object Lock of s3://{self.bucket}/{key}", head, key)
            if answer.get("ObjectLockLegalHoldStatus") == "ON":
                holds.append(key.rsplit("/", 1)[-1] or key)
            retain = _utc(answer.get("ObjectLockRetainUntilDate"))
            if retain is not None and retain > now and (until is None or retain > until):
                until, mode = retain, answer.get("ObjectLockMode")
        if until is None and not holds:
            return None
        parts = []
        if until is not None:
            parts.append(f"Object Lock {mode + ' ' if mode else ''}until {_text(until)}")
        if holds:
            parts.append(f"Object Lock legal hold on {', '.join(holds[:3])}{' and more' if len(holds) > 3 else ''}")
        return dict(reason="; ".join(parts), until=_text(until) if until is not None else None)

    def deletion_refusal(self, name, now: datetime | None = None) -> dict | None:
        """Why deleting ``name`` (a backup or an unfinished copy) would be refused, read from its
        objects' Object Lock, as ``dict(reason, until)``; None when nothing there is locked."""
        return self._lock_of(list(self.list_keys(self.key(name))), now)

    def _delete_refusable(self, keys, what) -> list:
        """Delete ``keys``; the ``(key, code, message)`` the server refused (``is_refusal``); any
        other failure raises."""
        refused = []
        keys = sorted(keys)
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            try:
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": key} for key in batch], "Quiet": True})
            except botocore.exceptions.ClientError as exc:
                code, message = _code_and_message(exc)
                if not is_refusal(code, message):
                    raise self.explain(exc, what)
                refused.extend((key, code, message) for key in batch)
                continue
            except botocore.exceptions.BotoCoreError as exc:
                raise self.explain(exc, what)
            for error in answer.get("Errors") or []:
                code, message = str(error.get("Code", "")), str(error.get("Message", ""))
                if not is_refusal(code, message):
                    raise GaleraError(f"{what}: the server refused to delete {error.get('Key')} ({code}: {message}). "
                                      f"{UNTOUCHED}")
                refused.append((error.get("Key"), code, message))
        return refused

    # -- the primitives
    def _entries(self):
        groups, loose = {}, []
        for key in self.list_keys(self.prefix):
            rest = key[len(self.prefix):]
            name, sep, rel = rest.partition("/")
            if sep:
                groups.setdefault(name, set()).add(rel)
            else:
                loose.append(name)
        entries = [dict(name=name, dir=False, manifest=None, record=None) for name in loose]
        for name, rels in sorted(groups.items()):
            entries.append(dict(name=name, dir=True,
                                manifest=self._read(name, MANIFEST) if MANIFEST in rels else None,
                                record=self._read(name, RUN_RECORD) if RUN_RECORD in rels else None))
        return entries

    def _state(self, name, rels):
        base = self.key(name)
        present = [key[len(base):] for key in self.list_keys(base)]
        if not present:
            return None
        hashes = {rel: self.hash_object(base + rel) for rel in rels if rel in present}
        manifest = self._read(name, MANIFEST) if MANIFEST in present else None
        return dict(files=present, hashes=hashes, failed=[], manifest=manifest)

    def _begin(self, local, repair, record):
        # The run record first (in the standard class, so that it can always be read back), then a copy
        # being repaired stops counting as a backup before anything else changes.
        self.put_bytes(self.key(local.id, RUN_RECORD), _stores.run_record_bytes(record), storage_class=False)
        if repair is not None:
            self.delete_keys([self.key(local.id, MANIFEST)],
                             f"deleting {self.url(local.id)}/{MANIFEST} of the damaged copy")

    def _send(self, local, name, rels):
        for rel in rels:
            key = self.key(name, rel)

            def send(checksum, rel=rel, key=key):
                extra = dict(self.extra, **({"ChecksumAlgorithm": "SHA256"} if checksum else {}))
                return self.client.upload_file(os.path.join(local.path, rel), self.bucket, key, ExtraArgs=extra or None,
                                               Config=self.transfer)
            self.call(f"uploading {rel} to s3://{self.bucket}/{key}", self._upload, send)

    def _drop(self, name, rels):
        if rels:
            self.delete_keys([self.key(name, rel) for rel in rels], f"deleting objects under {self.url(name)}/")

    def _publish(self, local):
        manifest_key = self.key(local.id, MANIFEST)
        self.put_bytes(manifest_key, local.manifest_bytes)
        if self.hash_object(manifest_key) != local.manifest_sha:
            self.delete_keys([manifest_key], f"deleting the mismatching {self.url(local.id)}/{MANIFEST}")
            raise GaleraError(f"the copy at {self.url(local.id)} does not match: {MANIFEST} read back differs; it was "
                              f"deleted there, so the copy does not count as a backup. {UNTOUCHED} Run again.",
                              mismatched=[MANIFEST])
        self.delete_keys([self.key(local.id, RUN_RECORD)], f"deleting {self.url(local.id)}/{RUN_RECORD}")

    def _read(self, name, rel):
        return self._stream(self.key(name, rel), lambda body: body.read())

    def _download(self, name, rels, target):
        for rel in rels:
            destination = os.path.join(target, rel)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            self.call(f"downloading {self.url(name)}/{rel}", self.client.download_file, self.bucket,
                      self.key(name, rel), destination, Config=self.transfer)

    def _remove(self, name):
        where = self.url(name)
        keys = sorted(self.list_keys(self.key(name)))
        lock = self._lock_of(keys)
        if lock is not None:
            raise GaleraError(f"{where} was not deleted: the destination refuses deletion ({lock['reason']}). It is "
                              "whole and kept.", refused=True, whole=True, **lock)
        manifest_key = self.key(name, MANIFEST)
        manifest = self._read(name, MANIFEST) if manifest_key in keys else None
        # The manifest first: a backup whose deletion is cut short no longer counts.
        if manifest is not None:
            refused = self._delete_refusable([manifest_key], f"deleting {where}/{MANIFEST}")
            if refused:
                raise self._refused(where, refused, "nothing was deleted; it is whole and kept", whole=True)
        rest = [key for key in keys if key != manifest_key]
        refused = self._delete_refusable(rest, f"deleting {where}")
        if not refused:
            return
        if len(refused) < len(rest):
            raise self._refused(where, refused, f"{len(rest) - len(refused)} of its {len(rest)} other objects "
                                f"{'and its ' + MANIFEST + ' ' if manifest is not None else ''}were deleted, so it "
                                f"no longer counts as a backup; the {len(refused)} refused stay under {where}/: "
                                "delete them by hand once the server allows it", whole=False)
        if manifest is not None:
            self.put_bytes(manifest_key, manifest)  # nothing else went: whole again, and counted
            raise self._refused(where, refused, f"its {MANIFEST} was put back; it is whole and kept", whole=True)
        raise self._refused(where, refused, "nothing was deleted; it is kept", whole=True)

    def _writer(self, name, rel, size_hint=None):
        if not _stores.safe_rel(rel):
            raise GaleraError(f"refused to stream {rel!r}: not a file inside a backup. Nothing was streamed.")
        return S3Writer(self, self.key(name, rel), size_hint)

    def _discard_uploads(self, name):
        """Abort the multipart uploads under ``<prefix><name>/`` (a dead stream's). Where the server
        cannot list them (no s3:ListBucketMultipartUploads), a lifecycle rule must."""
        base = self.key(name)
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for upload in page.get("Uploads", []) or []:
                    if str(upload.get("Key", "")).startswith(base):
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            pass

    def _refused(self, where, refused, outcome, whole):
        key, code, message = refused[0]
        reason = (f"{code}: {message or 'no message'}" + (f", for {len(refused)} objects" if len(refused) > 1 else ""))
        if code in ("AccessDenied", "403") and "lock" not in message.lower():
            reason += "; an Object Lock, a bucket policy, or credentials without s3:DeleteObject"
        return GaleraError(f"{where}: the server refused to delete {key} ({reason}): {outcome}.", refused=True,
                           whole=whole, reason=reason, until=None)
