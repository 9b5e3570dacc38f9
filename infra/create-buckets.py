"""Create S3 buckets that do not exist yet: the one-shot `s3-init` service of infra/compose.yaml.

    python create-buckets.py BUCKET [BUCKET ...]

boto3 reads the endpoint (AWS_ENDPOINT_URL) and the key pair from the environment. A bucket that is
already there, owned by these credentials, is left as it is, so the service can run on every `up`.
"""

from __future__ import annotations

import sys

import boto3
from botocore.exceptions import ClientError


def create_buckets(names: list[str], client=None) -> list[str]:
    """Create each bucket in `names` that is missing; return the names it created."""
    s3 = client or boto3.client("s3")
    created = []
    for name in names:
        try:
            s3.head_bucket(Bucket=name)
            continue
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
        region = s3.meta.region_name
        # us-east-1 is the one region S3 refuses a LocationConstraint for.
        extra = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=name, **extra)
        created.append(name)
    return created


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: create-buckets.py BUCKET [BUCKET ...]", file=sys.stderr)
        return 2
    created = create_buckets(argv)
    for name in argv:
        print(f"{name}: {'created' if name in created else 'exists'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
