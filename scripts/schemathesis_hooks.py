"""Schemathesis hooks for qstore's /openapi.json (loaded through SCHEMATHESIS_HOOKS).

The Hub's commit endpoint takes `application/x-ndjson`, which schemathesis cannot serialise on
its own: a generated string is sent as the body as it is, anything else as one JSON line.
"""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return (json.dumps(value) + "\n").encode()
