#!/usr/bin/env python3
"""An independent consumer of the Twin API: compiles the stubs from proto/ with grpc_tools,
subscribes over TLS with the bearer token, prints one JSON line per batch and exits after
--count batches."""

import argparse
import json
import sys
import tempfile

import grpc
from grpc_tools import protoc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--addr", required=True, help="host:port of the replayer")
    ap.add_argument("--ca", required=True, help="CA certificate (PEM)")
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--host", default="", help="host id to follow (default: all)")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--proto-root", required=True)
    a = ap.parse_args()

    out = tempfile.mkdtemp()
    protos = [f"safetytwin/v1/{p}.proto" for p in ("model", "ingest", "twin")]
    if protoc.main(["protoc", f"-I{a.proto_root}", f"--python_out={out}",
                    f"--grpc_python_out={out}", *protos]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    from safetytwin.v1 import twin_pb2, twin_pb2_grpc  # noqa: E402

    with open(a.ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    with open(a.token_file) as f:
        token = f.read().strip()
    with grpc.secure_channel(a.addr, creds) as channel:
        stub = twin_pb2_grpc.TwinStub(channel)
        batches = stub.Subscribe(
            twin_pb2.SubscribeRequest(host_id=a.host),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=30,
        )
        for n, batch in enumerate(batches, start=1):
            line = {"seq": batch.seq, "host": batch.host_id,
                    "files": [f.path for f in batch.files]}
            print(json.dumps(line), flush=True)
            if n >= a.count:
                return


if __name__ == "__main__":
    main()
