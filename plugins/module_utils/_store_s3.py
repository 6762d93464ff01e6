# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A backup store in an S3-compatible bucket, through boto3 (private).

A backup is the objects under ``<prefix><id>/``; it counts once ``<prefix><id>/manifest.json``
exists, which is uploaded last, after every other object was streamed back and hashed. An upload in
progress carries ``<prefix><id>/.run.json`` (its run record) until it is complete. Works with AWS S3
and with S3-compatible servers (MinIO, Ceph RGW, moto), addressed path-style with an endpoint URL.
"""

from __future__ import annotations

import hashlib
import os
import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.dbtools.galera.plugins.module_utils import _stores
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

try:
    import boto3
    import botocore.exceptions
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config as BotoConfig
except ImportError:
    boto3 = None
    BOTO3_IMPORT_ERROR = traceback.format_exc()
else:
    BOTO3_IMPORT_ERROR = None

MANIFEST, RUN_RECORD, UNTOUCHED = _stores.MANIFEST, _stores.RUN_RECORD, _stores.UNTOUCHED
MULTIPART = 16 * 1024 * 1024


class S3Store(_stores.Store):
    kind = "s3"
    staging_suffix = ""

    def __init__(self, opts: dict):
        if boto3 is None:
            raise GaleraError(missing_required_lib("boto3"), exception=BOTO3_IMPORT_ERROR)
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
        extra = self.extra if storage_class else {}
        self.call(f"uploading s3://{self.bucket}/{key}", self.client.put_object, Bucket=self.bucket, Key=key,
                  Body=data, **extra)

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
            self.call(f"uploading {rel} to s3://{self.bucket}/{key}", self.client.upload_file,
                      os.path.join(local.path, rel), self.bucket, key, ExtraArgs=dict(self.extra) or None,
                      Config=self.transfer)

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
        # The manifest first: a backup whose deletion is cut short no longer counts.
        self.delete_keys([self.key(name, MANIFEST)], f"deleting {self.url(name)}/{MANIFEST}")
        self.delete_keys(self.list_keys(self.key(name)), f"deleting {self.url(name)}")
