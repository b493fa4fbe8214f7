"""The HTTP API and the page of the search service (FastAPI; the `serve` extra).

Endpoints (JSON unless said otherwise; every error is `{"error": "<one line>"}` with a 4xx):

  GET  /                      the page: query gallery, results, radius, upload
  GET  /api/health            {"status": "ok", "database": N}
  GET  /api/stats             bits, database size (original + added), queries, labels, ...
  GET  /api/search?query=I|item=I[&topk=10][&radius=R]
                              the topk nearest database items of gallery query I (or of database
                              item I): item, distance, label, relevant, added; the query's AP
  POST /api/search[?topk=10][&radius=R]
                              the same for an uploaded image (the body, or the multipart
                              field `image`)
  POST /api/items[?label=L]   adds images (the body, or multipart fields `image`, with
                              optional `label` fields in the same order); needs
                              `Authorization: Bearer TOKEN` when the server has a token
  GET  /api/queries/I.png, /api/items/I.png[?scale=S]   the images

Request bodies are bounded (`max_upload_bytes`, 413 beyond, checked while reading).
"""

from __future__ import annotations

import hmac
import importlib.resources
import logging
import urllib.parse

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from hashjax.serve import uploads
from hashjax.serve.service import SearchService, ServeError

log = logging.getLogger(__name__)

MAX_FILES = 256  # images in one add


class RequestGuard:
  """ASGI middleware in front of the app: a Host header not in `allowed_hosts` (when given)
  gets 400; a POST a browser sends for another site's page gets 403; a request body over
  `max_bytes` gets 413, whether its length is declared (answered before reading) or it streams
  in chunks (answered when the limit is passed)."""

  def __init__(self, app, max_bytes: int, allowed_hosts=None):
    self.app, self.max_bytes = app, max_bytes
    self.allowed_hosts = None if allowed_hosts is None else set(allowed_hosts)

  def _message(self) -> str:
    return f'the request body is over the {self.max_bytes:,}-byte limit (--max_upload_mb)'

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    host = _host(Request(scope).headers.get('host', ''))
    if self.allowed_hosts is not None and host not in self.allowed_hosts:
      return await _error(400, f'Host {str(host)[:60]!r} is not one this server answers to '
                          f'({", ".join(sorted(self.allowed_hosts))})')(scope, receive, send)
    if scope['method'] == 'POST' and _cross_site(Request(scope)):
      origin = dict(scope.get('headers') or []).get(b'origin', b'?').decode('latin-1')[:60]
      return await _error(403, 'a page of another site cannot post here (Origin '
                          f'{origin})')(scope, receive, send)
    declared = dict(scope.get('headers') or []).get(b'content-length')
    if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
      return await _error(413, self._message())(scope, receive, send)
    seen = 0

    async def counted_receive():
      nonlocal seen
      message = await receive()
      seen += len(message.get('body', b''))
      if seen > self.max_bytes:  # answered by the app's HTTPException handler
        raise HTTPException(413, self._message())
      return message

    return await self.app(scope, counted_receive, send)


def _host(netloc: str) -> str | None:
  """The host name of a Host header or an Origin's netloc ('127.0.0.1:8000' → '127.0.0.1');
  None when it cannot be parsed."""
  try:
    return urllib.parse.urlsplit(f'//{netloc}').hostname
  except ValueError:  # e.g. '[::1' (an unclosed IPv6 bracket)
    return None


def _error(status: int, message: str) -> JSONResponse:
  return JSONResponse({'error': ' '.join(str(message).split())}, status)


def _validation_message(exc: RequestValidationError) -> str:
  first = exc.errors()[0]
  name, shown = first.get('loc', ('?',))[-1], repr(first.get('input'))
  shown = shown if len(shown) <= 40 else shown[:40] + '…'
  return f'{name}={shown}: {first.get("msg", "invalid")}'


def _authorized(request: Request, token: str | None) -> bool:
  """No token set, or `Authorization: Bearer <token>`, the scheme in any case (RFC 9110) and
  the token compared in constant time, as bytes: headers arrive as latin-1 text."""
  if token is None:
    return True
  scheme, _, sent = request.headers.get('authorization', '').partition(' ')
  return scheme.lower() == 'bearer' and hmac.compare_digest(
      sent.encode('latin-1', 'replace'), token.encode())


def _cross_site(request: Request) -> bool:
  """A request a page of another site made the browser send (refused for POSTs: a form on
  any web page could otherwise add images to a server on this machine)."""
  if request.headers.get('sec-fetch-site', 'same-origin') not in ('same-origin', 'none'):
    return True
  origin = request.headers.get('origin')
  if origin is None:
    return False
  try:
    return urllib.parse.urlsplit(origin).netloc != request.headers.get('host')
  except ValueError:
    return True  # an Origin that is not a URL is not this server


def _add_handlers(app: FastAPI) -> None:
  app.add_exception_handler(ServeError, lambda _, e: _error(e.status, str(e)))
  app.add_exception_handler(uploads.BadImage, lambda _, e: _error(e.status, str(e)))
  app.add_exception_handler(RequestValidationError,
                            lambda _, e: _error(422, _validation_message(e)))
  app.add_exception_handler(
      HTTPException, lambda r, e: _error(e.status_code, f'no such endpoint: {r.url.path}'
                                         if e.status_code == 404 else e.detail))

  def gone(request, _):  # the answer goes nowhere; nothing was added
    log.info('the client of %s left before its request arrived', request.url.path)
    return _error(400, 'the client disconnected before its request arrived')
  app.add_exception_handler(ClientDisconnect, gone)

  async def internal(_, exc):
    log.exception('unexpected error')
    return _error(500, f'internal error ({type(exc).__name__}); see the server log')
  app.add_exception_handler(Exception, internal)


async def _images_from(request: Request) -> tuple[list[bytes], list[str | None]]:
  """(image bodies, labels) of a request: its raw body, or multipart `image`/`label` fields."""
  if request.headers.get('content-type', '').startswith('multipart/form-data'):
    async with request.form(max_files=MAX_FILES, max_fields=MAX_FILES) as form:
      files = form.getlist('image')
      if any(isinstance(f, str) for f in files):
        raise ServeError('multipart field image must be a file (curl -F image=@photo.png)')
      labels = [str(v) for v in form.getlist('label')]
      return [await f.read() for f in files], labels
  return [await request.body()], []


def _png(image_HxWxC: np.ndarray, scale: int) -> Response:
  if not 1 <= scale <= 16:
    raise ServeError(f'scale={scale} is out of range; accepted: 1..16', 422)
  return Response(uploads.encode_png(image_HxWxC, scale), media_type='image/png',
                  headers={'Cache-Control': 'no-cache'})


def create_app(service: SearchService, *, token: str | None = None,
               max_upload_bytes: int = 8 << 20, allowed_hosts=None) -> RequestGuard:
  """The ASGI app (FastAPI inside a body-size limit) over `service`; `token`: needed (as a
  Bearer token) to add images; `max_upload_bytes`: the largest request body; `allowed_hosts`:
  the Host headers answered (None: any; the CLI names its loopback names, which stops DNS
  rebinding). POSTs a browser sends for another site's page get 403."""
  app = FastAPI(title='hashjax search', docs_url='/api/docs', redoc_url=None)
  _add_handlers(app)

  page = importlib.resources.files('hashjax.serve').joinpath('page.html').read_text()

  @app.get('/', response_class=HTMLResponse)
  def index():
    return page

  @app.get('/api/health')
  def health():
    return {'status': 'ok', 'database': len(service.index)}

  @app.get('/api/stats')
  def stats():
    return service.stats()

  @app.get('/api/search')
  def search(query: int | None = None, item: int | None = None, topk: int = 10,
             radius: int | None = None):
    if (query is None) == (item is None):
      raise ServeError('give exactly one of query=I (a gallery query) or item=I (a database '
                       'item), or POST an image', 422)
    if query is not None:
      return service.search_query(query, topk, radius)
    return service.search_item(item, topk, radius)

  @app.post('/api/search')
  async def search_upload(request: Request, topk: int = 10, radius: int | None = None):
    service.check_topk(topk, radius)
    bodies, _ = await _images_from(request)
    if len(bodies) != 1:
      raise ServeError(f'send exactly one image to search with, got {len(bodies)}')
    image = await run_in_threadpool(uploads.decode_image, bodies[0], service.image_shape)
    return await run_in_threadpool(service.search_image, image, topk, radius)

  @app.post('/api/items')
  async def add_items(request: Request, label: str | None = None):
    if not _authorized(request, token):
      response = _error(401, 'adding images needs the header Authorization: Bearer <token> '
                        '(the server\'s --token)')
      response.headers['WWW-Authenticate'] = 'Bearer'
      return response
    bodies, labels = await _images_from(request)
    labels = labels or [label] * len(bodies)
    if not bodies or len(labels) != len(bodies):
      raise ServeError(f'{len(bodies)} images but {len(labels)} labels; give one label per '
                       'image, or none')
    parsed = [service.parse_label(text) for text in labels]
    await run_in_threadpool(uploads.count_pixels, bodies)
    images = [await run_in_threadpool(uploads.decode_image, body, service.image_shape,
                                      f'image {i}') for i, body in enumerate(bodies)]
    ids = await run_in_threadpool(service.add, np.stack(images),
                                  None if parsed[0] is None else np.stack(parsed))
    return {'added': ids, 'database': len(service.index)}

  @app.get('/api/queries/{i}.png')
  def query_png(i: int, scale: int = 1):
    return _png(service.query_image(i), scale)

  @app.get('/api/items/{i}.png')
  def item_png(i: int, scale: int = 1):
    return _png(service.item_image(i), scale)

  return RequestGuard(app, max_upload_bytes, allowed_hosts)
