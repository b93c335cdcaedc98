"""The S3 blob store on a real SeaweedFS (tests/seaweed.py): what is particular to S3.

The cases every store passes are in tests/test_store_conformance.py.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.seaweed import S3Area


async def test_the_test_store_signs_requests_and_honours_conditional_creates(
    s3_area: S3Area,
) -> None:
    await s3_area.put("blake3/ab/abc", b"first")
    async with s3_area.client() as client:
        with pytest.raises(ClientError) as refused:
            await client.put_object(
                Bucket=s3_area.bucket,
                Key=f"{s3_area.prefix}blake3/ab/abc",
                Body=b"2",
                IfNoneMatch="*",
            )
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert await s3_area.get("blake3/ab/abc") == b"first"
    assert await s3_area.keys() == ["blake3/ab/abc"]
    async with s3_area.seaweed.client(retries=1, secret_key="wrong") as client:
        with pytest.raises(ClientError) as denied:  # requests are signed and checked
            await client.list_objects_v2(Bucket=s3_area.bucket, Prefix=s3_area.prefix)
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
