"""Create MLflow's artifact bucket on the S3-compatible store unless it exists (compose's one-shot service).

    python infra/create_bucket.py BUCKET   # endpoint: MLFLOW_S3_ENDPOINT_URL (none: AWS); keys: AWS_* variables
"""

from __future__ import annotations

import os
import sys

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def create_bucket(name: str, endpoint_url: str | None = None) -> bool:
    """Create bucket `name`; False when it already exists. Other errors (keys, endpoint) propagate."""
    s3 = boto3.client("s3", endpoint_url=endpoint_url)
    try:
        s3.head_bucket(Bucket=name)
        return False
    except ClientError as err:
        if err.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
            raise
    s3.create_bucket(Bucket=name)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: create_bucket.py BUCKET", file=sys.stderr)
        return 2
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    try:
        created = create_bucket(argv[0], endpoint)
    except (BotoCoreError, ClientError) as err:
        print(f"bucket {argv[0]!r} on {endpoint or 'AWS S3'}: {err}", file=sys.stderr)
        return 1
    print(f"bucket {argv[0]!r} on {endpoint or 'AWS S3'}: {'created' if created else 'exists'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
