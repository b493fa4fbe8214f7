"""Deadlines for slow clients: a request's headers must arrive within `header_timeout` seconds
and the whole request (headers and body) within `request_timeout` seconds, counted from the
connection's opening or the end of the previous response on it (keep-alive). A request that
misses its deadline is answered 408 with a one-line JSON error and the connection is closed,
so half-sent requests cannot hold connections open (uvicorn's own timeout covers only idle
keep-alive connections). Once a request has fully arrived, the app's time to answer it is not
limited.

The deadlines are a subclass of uvicorn's HTTP protocol (h11, or httptools where installed),
passed as `uvicorn.Config(http=...)`; they read only the protocol's `transport`, `loop` and
`cycle` (the request whose headers have arrived, with `more_body` while its body is still
arriving), which both of uvicorn's implementations have.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)


def _timeout_response(message: str) -> bytes:
  body = json.dumps({'error': message}).encode()
  return (b'HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n'
          b'connection: close\r\ncontent-length: %d\r\n\r\n' % len(body)) + body


def with_deadlines(base: type, header_timeout: float, request_timeout: float) -> type:
  """A subclass of the uvicorn protocol class `base` that enforces the deadlines (seconds,
  header_timeout ≤ request_timeout) of the module docstring."""
  if not 0 < header_timeout <= request_timeout:
    raise ValueError(f'header_timeout={header_timeout} and request_timeout={request_timeout}: '
                     'accepted 0 < header_timeout ≤ request_timeout')

  class DeadlineProtocol(base):
    """`base` with the header and request deadlines (see `with_deadlines`)."""

    def connection_made(self, transport):
      super().connection_made(transport)
      self._start_deadlines()

    def connection_lost(self, exc):
      self._cancel_deadline()
      super().connection_lost(exc)

    def on_response_complete(self):
      super().on_response_complete()
      if not self.transport.is_closing():
        self._start_deadlines()  # the next request on this keep-alive connection

    def _start_deadlines(self):
      self._cancel_deadline()  # the last request's, if it is still pending
      self._served = self.cycle  # the request answered before this one (None: the first)
      self._started = self.loop.time()
      self._deadline = self.loop.call_later(header_timeout, self._check, 'headers',
                                            request_timeout - header_timeout)

    def _cancel_deadline(self):
      deadline = getattr(self, '_deadline', None)
      if deadline is not None:
        deadline.cancel()
        self._deadline = None

    def _check(self, waiting_for: str, then: float):
      self._deadline = None
      if self.transport.is_closing():
        return
      cycle = self.cycle if self.cycle is not self._served else None
      if cycle is not None and not cycle.more_body:
        return  # the request has arrived; the app answers in its own time
      if cycle is not None and waiting_for == 'headers':
        self._deadline = self.loop.call_later(then, self._check, 'body', 0.0)
        return
      what, limit, flag = (('headers', header_timeout, 'header_timeout') if cycle is None else
                           ('request body', request_timeout, 'request_timeout'))
      log.info('closing a connection whose %s did not arrive within %g s', what, limit)
      if cycle is None or not getattr(cycle, 'response_started', False):
        self.transport.write(_timeout_response(
            f'the {what} did not arrive within {limit:g} s (--{flag})'))
      self.transport.close()

  DeadlineProtocol.__name__ = f'Deadline{base.__name__}'
  return DeadlineProtocol


def protocol(header_timeout: float, request_timeout: float) -> type:
  """uvicorn's default HTTP protocol class with the deadlines: pass as
  `uvicorn.Config(app, http=protocol(10, 60))`."""
  from uvicorn.protocols.http.auto import AutoHTTPProtocol  # pylint: disable=g-import-not-at-top
  return with_deadlines(AutoHTTPProtocol, header_timeout, request_timeout)
