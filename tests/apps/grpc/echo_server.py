"""A gRPC worker for tests/edge_protocols.rs (grpcio from PyPI, installed by .ci/run).

drover forks it with PORT and WORKER_ID and speaks h2c to it (`workers.protocol: h2c`).
Messages are raw bytes (no protobuf needed): the generic handler below serves
  /echo.Echo/Say      unary: answers b"<worker id>:<request>", trailing metadata
                      `x-worker: <id>`
  /echo.Echo/Count    server streaming: the request is a number N; answers N messages
  /echo.Echo/Chat     bidirectional streaming: answers each message as b"<id>:<message>"
  /echo.Echo/Fail     unary: always UNAVAILABLE (a sick backend)
A plain HTTP/2 GET of /health (drover's health check) is not a gRPC call; grpcio answers
it with HTTP 200 and a grpc-status (UNIMPLEMENTED), which is enough to show it is up.
With FAIL_WORKER=<id>, that worker answers every Say with UNAVAILABLE.
"""
import os
import sys
import time
from concurrent import futures

import grpc

WORKER = os.environ.get("WORKER_ID", "0")
FAILING = os.environ.get("FAIL_WORKER") == WORKER


def say(request, context):
    if FAILING:
        context.abort(grpc.StatusCode.UNAVAILABLE, "worker failing")
    context.set_trailing_metadata((("x-worker", WORKER),))
    return WORKER.encode() + b":" + request


def count(request, context):
    for i in range(int(request.decode() or "0")):
        yield f"{WORKER}:{i}".encode()


def chat(requests, context):
    for r in requests:
        yield WORKER.encode() + b":" + r


def fail(request, context):
    context.abort(grpc.StatusCode.UNAVAILABLE, "always unavailable")


def main():
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    server.start()
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
