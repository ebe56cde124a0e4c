"""``evaclip serve INDEX_DIR``: the search API and web page for an index built by ``evaclip index``.

Binds 127.0.0.1 unless ``--host`` says otherwise; the model is rebuilt from the index's record and checked
against it, so no model flags are needed. See :mod:`evaclip.search.app` for the routes.
"""
from __future__ import annotations

import argparse
import socket
import sys

from evaclip.errors import EvaclipError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Serve an index built by `evaclip index`: GET /api/search?q=TEXT&k=K, POST /api/search "
                          "(an image), POST /api/classify, GET /api/health, and a search page at /.")
    parser.add_argument("index", metavar="INDEX_DIR", help="index folder written by `evaclip index`")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, this machine only; 0.0.0.0 exposes the "
                             "collection to the network)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    parser.add_argument("--pretrained", default=None,
                        help="the index's checkpoint at a new location (it is checked to embed identically)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--nprobe", type=int, default=None,
                        help="IVF lists searched per query (approximate indexes; more = slower, better recall)")
    parser.add_argument("--max-upload-mb", type=float, default=16, help="upload size limit (default: %(default)s)")
    parser.add_argument("--max-upload-pixels", type=int, default=40_000_000,
                        help="uploaded image pixel limit, checked before decoding (default: %(default)s)")


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise EvaclipError(f"--port {port}: choose a port from 0 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise EvaclipError(f"--host {host}: cannot resolve it ({e.strerror}); use an address such as 127.0.0.1") \
            from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise EvaclipError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    sock.listen(128)
    return sock


def run(args: argparse.Namespace) -> int:
    if args.max_upload_mb <= 0 or args.max_upload_pixels <= 0:
        raise EvaclipError("--max-upload-mb and --max-upload-pixels must be positive")
    sock = _bind(args.host, args.port)  # before loading the model: a busy port is reported at once
    try:
        import uvicorn

        from evaclip.search.app import create_app
        from evaclip.search.service import SearchIndex
        index = SearchIndex(args.index, pretrained=args.pretrained, device=args.device, nprobe=args.nprobe,
                            max_pixels=args.max_upload_pixels)
        app = create_app(index, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                         max_upload_pixels=args.max_upload_pixels)
        host, port = sock.getsockname()[:2]
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"evaclip serve: warning: listening on {args.host}: anyone who can reach this machine can search "
                  "and read the indexed images", file=sys.stderr)
        shown = f"[{host}]" if ":" in host else host
        print(f"serving {index.count} images from {args.index} on http://{shown}:{port}/", flush=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        uvicorn.Server(config).run(sockets=[sock])
        index.close()
    finally:
        sock.close()
    return 0
