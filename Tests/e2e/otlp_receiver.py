"""An OTLP metrics receiver for the e2e tests, built only from official
parts: the opentelemetry-proto package's message classes and, for gRPC, its
MetricsService servicer stub served by grpcio; TLS and mTLS from Python's ssl
module or grpcio's credentials. Prints "ready", then one JSON line per export
request: what it decoded, the headers it got and how the body came on the
wire. With --record DIR, each request's (decompressed) protobuf bytes are
kept as DIR/<proto>-<n>.pb for the interop test.

Usage: otlp_receiver.py --proto http|grpc --port N [--cert F --key F]
       [--client-ca F] [--require-header k=v] [--record DIR]
       [--http-script 503:2,200] [--partial N]
"""
from __future__ import annotations

import argparse
import gzip
import http.server
import json
import os
import ssl
import sys
import threading
import time
from concurrent import futures

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as svc

ap = argparse.ArgumentParser()
ap.add_argument("--proto", choices=["http", "grpc"], required=True)
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--cert")
ap.add_argument("--key")
ap.add_argument("--client-ca", help="require a client certificate signed by this CA (mTLS)")
ap.add_argument("--require-header", help="k=v: answer 401 / UNAUTHENTICATED without it")
ap.add_argument("--record")
ap.add_argument("--http-script", default="", help="statuses for the first requests, e.g. 503:2 (Retry-After 2),200")
ap.add_argument("--partial", type=int, default=0, help="rejected_data_points in the first accepted response")
ap.add_argument("--quiet", action="store_true", help="answer without decoding or printing (tools/bench otlp)")
args = ap.parse_args()

lock = threading.Lock()
count = {"n": 0, "partial_sent": False}
script = [s for s in args.http_script.split(",") if s]
want_header = tuple(args.require_header.split("=", 1)) if args.require_header else None


def summarize(body: bytes, meta: dict) -> tuple[dict, svc.ExportMetricsServiceRequest]:
    req = svc.ExportMetricsServiceRequest.FromString(body)
    out = {**meta, "resource": {}, "metrics": {}, "time": 0, "start": []}
    for rm in req.resource_metrics:
        out["resource"] = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
        for sm in rm.scope_metrics:
            out["scope"] = sm.scope.name
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                pts = []
                if kind in ("sum", "gauge"):
                    for p in getattr(m, kind).data_points:
                        pts.append([{a.key: a.value.string_value for a in p.attributes}, p.as_double])
                        out["time"] = max(out["time"], p.time_unix_nano)
                        out["start"].append(p.start_time_unix_nano)
                elif kind == "histogram":
                    for p in m.histogram.data_points:
                        pts.append([{a.key: a.value.string_value for a in p.attributes}, p.count])
                extra = {}
                if kind == "sum":
                    extra = {"temporality": m.sum.aggregation_temporality, "monotonic": m.sum.is_monotonic}
                out["metrics"][m.name] = {"kind": kind, "unit": m.unit, "points": pts, **extra}
    out["start"] = sorted(set(out["start"]))
    return out, req


def record(body: bytes) -> None:
    with lock:
        count["n"] += 1
        n = count["n"]
    if args.record:
        with open(os.path.join(args.record, f"{args.proto}-{n}.pb"), "wb") as f:
            f.write(body)


def emit(obj: dict) -> None:
    with lock:
        print(json.dumps({**obj, "at": time.time()}), flush=True)


def partial_response() -> svc.ExportMetricsServiceResponse:
    r = svc.ExportMetricsServiceResponse()
    with lock:
        if args.partial and not count["partial_sent"]:
            count["partial_sent"] = True
            r.partial_success.rejected_data_points = args.partial
            r.partial_success.error_message = "test receiver refuses some points"
    return r


def serve_http() -> None:
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            wire = self.rfile.read(int(self.headers["Content-Length"]))
            if args.quiet:
                return self.answer(200)
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                step = script.pop(0) if script else "200"
            if want_header and headers.get(want_header[0]) != want_header[1]:
                emit({"refused": "missing header", "headers": sorted(headers)})
                return self.answer(401, b"missing credentials\n")
            if step != "200":
                code, _, after = step.partition(":")
                emit({"scripted": int(code), "retry_after": after})
                return self.answer(int(code), headers={"Retry-After": after} if after else {})
            enc = headers.get("content-encoding", "")
            body = gzip.decompress(wire) if enc == "gzip" else wire
            record(body)
            meta = {"proto": "http", "path": self.path, "ctype": headers.get("content-type"), "encoding": enc,
                    "wire_gzip_magic": wire[:2] == b"\x1f\x8b", "wire_bytes": len(wire), "body_bytes": len(body),
                    "headers": headers, "peer_cert": bool(self.connection.getpeercert()) if args.cert else False}
            emit(summarize(body, meta)[0])
            self.answer(200, partial_response().SerializeToString())

        def log_message(self, *a):
            pass

    s = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), H)
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
        s.socket = ctx.wrap_socket(s.socket, server_side=True)
    print("ready", flush=True)
    s.serve_forever()


def serve_grpc() -> None:
    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as svc_grpc


    class Servicer(svc_grpc.MetricsServiceServicer):
        def Export(self, request, context):
            if args.quiet:
                return svc.ExportMetricsServiceResponse()
            md = {k: v for k, v in context.invocation_metadata()}
            if want_header and md.get(want_header[0]) != want_header[1]:
                emit({"refused": "missing header", "headers": sorted(md)})
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing credentials")
            body = request.SerializeToString()
            record(body)
            meta = {"proto": "grpc", "path": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                    "encoding": md.get("grpc-encoding", ""), "headers": md,
                    "peer_cert": bool(context.auth_context().get("x509_common_name"))}
            emit(summarize(body, meta)[0])
            return partial_response()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    svc_grpc.add_MetricsServiceServicer_to_server(Servicer(), server)
    addr = f"127.0.0.1:{args.port}"
    if args.cert:
        with open(args.key, "rb") as k, open(args.cert, "rb") as c:
            pair = [(k.read(), c.read())]
        ca = open(args.client_ca, "rb").read() if args.client_ca else None
        creds = grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=bool(ca))
        server.add_secure_port(addr, creds)
    else:
        server.add_insecure_port(addr)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    serve_http() if args.proto == "http" else serve_grpc()
