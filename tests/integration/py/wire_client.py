"""Stock grpcio client for boomerang-primary, driven by primary_wire.test.js.

Usage: wire_client.py HOST:PORT   (with the generated boomerang_pb2*.py on PYTHONPATH)

Calls Status and Execute with every value type through the unmodified Python
gRPC stack and prints one JSON object on stdout. Integers are printed as
decimal strings and blobs as hex, so nothing is lost on the way to node.
"""

import json
import sys

import grpc

import boomerang_pb2 as pb
import boomerang_pb2_grpc as pb_grpc

TIMEOUT_S = 10


def value_to_json(v):
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null":
        return {"type": "null"}
    if kind == "integer":
        return {"type": "integer", "value": str(v.integer)}
    if kind == "real":
        return {"type": "real", "value": repr(v.real)}
    if kind == "text":
        return {"type": "text", "value": v.text}
    if kind == "text_bytes":
        return {"type": "text", "value": v.text_bytes.decode("utf-8")}
    return {"type": "blob", "value": v.blob.hex()}


def result_to_json(r):
    out = {
        "columns": [[c.name, c.decltype] for c in r.columns],
        "rows": [[value_to_json(v) for v in row.values] for row in r.rows],
        "affected_row_count": str(r.affected_row_count),
        "last_insert_rowid": str(r.last_insert_rowid),
        "has_last_insert_rowid": r.has_last_insert_rowid,
    }
    if r.HasField("error"):
        out["error"] = {"code": r.error.code, "extended_code": r.error.extended_code,
                        "message": r.error.message}
    return out


def response_to_json(res):
    return {
        "txid": str(res.txid),
        "head_txid": str(res.head_txid),
        "results": [result_to_json(r) for r in res.results],
    }


def main():
    addr = sys.argv[1]
    out = {}
    with grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.PrimaryStub(channel)
        st = stub.Status(pb.StatusRequest(), timeout=TIMEOUT_S)
        out["status"] = {"database_id": st.database_id, "epoch": str(st.epoch),
                         "head_txid": str(st.head_txid), "page_size": st.page_size}

        create = pb.Statement(sql="CREATE TABLE py (id INTEGER PRIMARY KEY, i INTEGER, r REAL, "
                                  "t TEXT, b BLOB, e BLOB, n)")
        insert = pb.Statement(
            sql="INSERT INTO py (i, r, t, b, e, n) VALUES (?, ?, ?, ?, ?, ?)",
            args=[pb.Value(integer=-9223372036854775808), pb.Value(real=-1.25e-7),
                  pb.Value(text="grüße 🐍"), pb.Value(blob=bytes(range(256))),
                  pb.Value(blob=b""), pb.Value(null=True)])
        insert2 = pb.Statement(
            sql="INSERT INTO py (i, r, t, b, e, n) VALUES (:i, @r, $t, :b, :e, :n)",
            named_args=[pb.NamedArg(name=":i", value=pb.Value(integer=9223372036854775807)),
                        pb.NamedArg(name="@r", value=pb.Value(real=2.0)),
                        pb.NamedArg(name="$t", value=pb.Value(text="")),
                        pb.NamedArg(name="b", value=pb.Value(blob=b"\x00")),
                        pb.NamedArg(name="e", value=pb.Value()),
                        pb.NamedArg(name="n", value=pb.Value(integer=0))])
        res = stub.Execute(pb.ExecuteRequest(statements=[create, insert, insert2],
                                             mode=pb.MODE_ATOMIC), timeout=TIMEOUT_S)
        out["write"] = response_to_json(res)

        select = pb.Statement(sql="SELECT i, r, t, b, e, n, typeof(e) FROM py ORDER BY id")
        res = stub.Execute(pb.ExecuteRequest(statements=[select]), timeout=TIMEOUT_S)
        out["read"] = response_to_json(res)

        dup = pb.Statement(sql="INSERT INTO py (id) VALUES (1)")
        res = stub.Execute(pb.ExecuteRequest(statements=[dup]), timeout=TIMEOUT_S)
        out["error"] = response_to_json(res)

        try:
            stub.Status(pb.StatusRequest(database="no-such-db"), timeout=TIMEOUT_S)
            out["not_found"] = "OK"
        except grpc.RpcError as e:
            out["not_found"] = e.code().name
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
