"""gRPC client for tests/edge_protocols.rs: `echo_client.py TARGET CALL...`.

TARGET is host:port of drover (h2c) or `tls:host:port:CAFILE:SNI` (HTTPS, h2 by ALPN).
Each CALL prints one JSON line:
  say:TEXT    -> {"call":"say","code":"OK","reply":"...","trailers":{...}}
  count:N     -> {"call":"count","code":"OK","replies":[...]}
  chat:N      -> {"call":"chat","code":"OK","replies":[...]} (N messages each way)
  fail        -> {"call":"fail","code":"UNAVAILABLE"}
"""
import json
import sys

import grpc


def channel(target):
    if target.startswith("tls:"):
        _, host, port, ca, sni = target.split(":", 4)
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(
            f"{host}:{port}", creds, options=(("grpc.ssl_target_name_override", sni),)
        )
    return grpc.insecure_channel(target)


def main():
    ch = channel(sys.argv[1])
    ident = lambda b: b
    for call in sys.argv[2:]:
        name, _, arg = call.partition(":")
        out = {"call": name}
        try:
            if name == "say":
                fn = ch.unary_unary("/echo.Echo/Say", request_serializer=ident, response_deserializer=ident)
                reply, c = fn.with_call(arg.encode(), timeout=10)
                out.update(code=c.code().name, reply=reply.decode(),
                           trailers={k: v for k, v in c.trailing_metadata()})
            elif name == "count":
                fn = ch.unary_stream("/echo.Echo/Count", request_serializer=ident, response_deserializer=ident)
                stream = fn(arg.encode(), timeout=10)
                out.update(replies=[r.decode() for r in stream], code=stream.code().name)
            elif name == "chat":
                fn = ch.stream_stream("/echo.Echo/Chat", request_serializer=ident, response_deserializer=ident)
                stream = fn(iter([f"m{i}".encode() for i in range(int(arg))]), timeout=10)
                out.update(replies=[r.decode() for r in stream], code=stream.code().name)
            elif name == "fail":
                fn = ch.unary_unary("/echo.Echo/Fail", request_serializer=ident, response_deserializer=ident)
                fn(b"", timeout=10)
                out.update(code="OK")
        except grpc.RpcError as e:
            out.update(code=e.code().name, details=e.details())
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
