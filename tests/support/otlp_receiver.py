"""An OTLP/HTTP traces receiver for tests/tracing.rs.

Decodes every ExportTraceServiceRequest with the reference implementation (the
`opentelemetry-proto` package, generated from the OpenTelemetry .proto files), so
drover's hand-written encoder is checked by an independent decoder. Writes one JSON
line per span to the file named by argv[2]; listens on 127.0.0.1:argv[1].
"""

import http.server
import json
import sys

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

OUT = open(sys.argv[2], "a", encoding="utf-8")


def value(v):
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        status = 200
        try:
            req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            if self.path != "/v1/traces":
                raise ValueError("path " + self.path)
            if self.headers.get("Content-Type") != "application/x-protobuf":
                raise ValueError("content type " + str(self.headers.get("Content-Type")))
            for rs in req.resource_spans:
                resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        OUT.write(json.dumps({
                            "resource": resource,
                            "scope": ss.scope.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": s.kind,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                            "status_code": s.status.code,
                            "status_message": s.status.message,
                            "flags": s.flags,
                        }) + "\n")
            OUT.flush()
        except Exception as e:  # a decode failure is the test's failure
            OUT.write(json.dumps({"error": repr(e)}) + "\n")
            OUT.flush()
            status = 400
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
