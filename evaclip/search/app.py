"""The HTTP API and web page of `evaclip serve` (a Starlette ASGI app).

    GET  /api/search?q=TEXT&k=K      {"results": [{"path", "score", "url", "thumbnail", "caption", ...}]}
    POST /api/search                 an image (multipart field "image", or a raw image body) -> the same
    POST /api/classify               multipart: "image" + "labels" (one per line, or repeated fields) ->
                                     {"results": [{"label", "probability"}]} best first, with the paper's
                                     80 ImageNet prompt templates
    GET  /api/health                 {"status": "ok", "count", "model", ...}
    GET  /images/{id}, /thumbs/{id}  an indexed image (bytes as stored), or a JPEG thumbnail
    GET  /                           the search page

Every error is JSON ``{"error": "..."}`` with a 4xx status (5xx only for a bug, without a traceback).
Images are addressed by their id in the index, never by a path, and are read only from inside the indexed root.
"""
from __future__ import annotations

import logging
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from evaclip.search.service import NotInIndex, SearchIndex

log = logging.getLogger("evaclip.search")

MAX_QUERY_CHARS = 1000
MAX_K = 100
MAX_LABELS = 100
MAX_LABEL_CHARS = 200
DEFAULT_MAX_UPLOAD_BYTES = 16 << 20
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


class ApiError(HTTPException):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


class _BodyTooLarge(Exception):
    pass


class LimitsMiddleware:
    """Refuses request bodies over ``max_bytes`` (413) before they are buffered, and adds security headers."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_large = _error(413, f"request body over the {self.max_bytes} byte limit; send a smaller image")
        if length is not None:
            try:
                if int(length) > self.max_bytes:
                    return await too_large(scope, receive, send)
            except ValueError:
                return await _error(400, "invalid Content-Length header")(scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.lower().encode() not in names]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge:
            if not started:
                await too_large(scope, receive, send)


def _k(value: str | None) -> int:
    if value is None or value == "":
        return 10
    try:
        k = int(value)
    except ValueError:
        raise ApiError(400, f"k must be an integer from 1 to {MAX_K}, got {value[:20]!r}") from None
    if not 1 <= k <= MAX_K:
        raise ApiError(400, f"k must be from 1 to {MAX_K}, got {k}")
    return k


def create_app(index: SearchIndex, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS) -> Starlette:
    """The ASGI app serving `index`."""
    from starlette.concurrency import run_in_threadpool

    from evaclip.data.decode import SkipSample, decode_image
    from evaclip.eval.catalog import default_templates
    from evaclip.eval.zeroshot import class_prompts, zeroshot_logits

    templates = default_templates("imagenet1k")

    async def read_image(request: Request):
        """The uploaded image (multipart field "image" or a raw image/* body), decoded within the limits."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        form = None
        if ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=MAX_LABELS + 10, max_part_size=1 << 20)
            except _BodyTooLarge:
                raise  # answered with 413 by its handler
            except Exception as e:  # noqa: BLE001 - the multipart parser's errors: a malformed request
                raise ApiError(400, f"malformed multipart body ({str(e)[:200]})") from None
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, 'no image: send the file in a multipart field named "image"')
            data = await upload.read()
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            data = await request.body()
        else:
            raise ApiError(415, "send an image as multipart/form-data (field \"image\") or as an image/* body")
        try:
            image = await run_in_threadpool(decode_image, data, max_upload_pixels)
        except SkipSample as e:
            if e.reason == "decompression_bomb":
                raise ApiError(413, f"image too large: {e} (limit {max_upload_pixels} pixels)") from None
            raise ApiError(415, "the upload is not an image that can be decoded (JPEG, PNG, WebP, GIF, ...)") \
                from None
        return image, form

    async def search_get(request: Request):
        q = request.query_params.get("q", "").strip()
        if not q:
            raise ApiError(400, "missing query: use /api/search?q=TEXT&k=10")
        if len(q) > MAX_QUERY_CHARS:
            raise ApiError(400, f"query longer than {MAX_QUERY_CHARS} characters")
        k = _k(request.query_params.get("k"))
        vector = (await index.embed_texts([q]))[0]
        results = await run_in_threadpool(index.search_vector, vector, k)
        return JSONResponse({"query": q, "k": k, "results": results})

    async def search_post(request: Request):
        image, form = await read_image(request)
        k = _k(request.query_params.get("k") or (form.get("k") if form is not None else None))
        vector = await index.embed_image(image)
        results = await run_in_threadpool(index.search_vector, vector, k)
        return JSONResponse({"k": k, "results": results})

    async def classify(request: Request):
        image, form = await read_image(request)
        if form is None:
            raise ApiError(400, 'send multipart/form-data with fields "image" and "labels"')
        labels = []
        for value in form.getlist("labels"):
            if not isinstance(value, str):
                raise ApiError(400, '"labels" must be text fields, not files')
            labels.extend(part.strip() for part in value.replace(",", "\n").splitlines())
        labels = list(dict.fromkeys(label for label in labels if label))
        if len(labels) < 2:
            raise ApiError(400, 'give at least two labels in the "labels" field (one per line or comma-separated)')
        if len(labels) > MAX_LABELS or any(len(label) > MAX_LABEL_CHARS for label in labels):
            raise ApiError(400, f"at most {MAX_LABELS} labels of at most {MAX_LABEL_CHARS} characters each")
        prompts = class_prompts(labels, templates)
        flat = await index.embed_texts([p for ps in prompts for p in ps])
        per_class = flat.reshape(len(labels), len(templates), -1).mean(1)
        per_class /= np.linalg.norm(per_class, axis=1, keepdims=True)
        import torch
        vector = await index.embed_image(image)
        logits = zeroshot_logits(torch.from_numpy(vector[None]), torch.from_numpy(per_class))
        probs = logits.softmax(-1)[0].tolist()
        order = sorted(range(len(labels)), key=lambda i: -probs[i])
        return JSONResponse({"results": [{"label": labels[i], "probability": probs[i]} for i in order],
                             "templates": len(templates)})

    async def health(request: Request):
        return JSONResponse(index.health())

    def _id(request: Request) -> int:
        return request.path_params["id"]

    async def image(request: Request):
        try:
            data, mime = await run_in_threadpool(index.image, _id(request))
        except NotInIndex:
            raise ApiError(404, "no such image in the index") from None
        return Response(data, media_type=mime, headers={"Cache-Control": "max-age=3600"})

    async def thumb(request: Request):
        try:
            data = await run_in_threadpool(index.thumbnail, _id(request))
        except NotInIndex:
            raise ApiError(404, "no such image in the index") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    static = resources.files("evaclip.search") / "static"

    async def page(request: Request):
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    async def http_error(request: Request, exc: HTTPException):
        message = exc.detail if isinstance(exc, ApiError) else {
            404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, message)

    async def server_error(request: Request, exc: Exception):
        log.exception("error serving %s %s", request.method, request.url.path)
        return _error(500, "internal error (logged by the server)")

    routes = [
        Route("/", page),
        Route("/api/search", search_get, methods=["GET"]),
        Route("/api/search", search_post, methods=["POST"]),
        Route("/api/classify", classify, methods=["POST"]),
        Route("/api/health", health),
        Route("/images/{id:int}", image),
        Route("/thumbs/{id:int}", thumb),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    async def body_too_large(request: Request, exc: Exception):
        return _error(413, f"request body over the {max_upload_bytes} byte limit; send a smaller image")

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, _BodyTooLarge: body_too_large,
                                                       Exception: server_error})
    app.state.index = index
    return LimitsMiddleware(app, max_upload_bytes)
