"""Tests for hashjax/serve/slow_clients.py: header and request deadlines on a real uvicorn
server (in a thread, on a free port), with raw sockets as the slow clients."""

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn

from hashjax.serve import slow_clients

HEADER, REQUEST = 0.6, 1.5


async def _app(scope, receive, send):
  """Reads the whole body, waits `?sleep=S` seconds, answers its length."""
  if scope['type'] != 'http':
    return
  body = b''
  while True:
    message = await receive()
    if message['type'] == 'http.disconnect':
      return
    body += message.get('body', b'')
    if not message.get('more_body'):
      break
  query = scope.get('query_string', b'').decode()
  if query.startswith('sleep='):
    await asyncio.sleep(float(query[6:]))
  out = json.dumps({'length': len(body)}).encode()
  await send({'type': 'http.response.start', 'status': 200,
              'headers': [(b'content-type', b'application/json'),
                          (b'content-length', str(len(out)).encode())]})
  await send({'type': 'http.response.body', 'body': out})


@pytest.fixture(scope='module')
def port():
  sock = socket.socket()
  sock.bind(('127.0.0.1', 0))
  config = uvicorn.Config(_app, http=slow_clients.protocol(HEADER, REQUEST),
                          log_level='warning', lifespan='off')
  server = uvicorn.Server(config)
  thread = threading.Thread(target=server.run, kwargs={'sockets': [sock]}, daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.01)
  yield sock.getsockname()[1]
  server.should_exit = True
  thread.join(timeout=10)


def _connect(port):
  client = socket.create_connection(('127.0.0.1', port), timeout=10)
  return client


def _read_all(client) -> tuple[bytes, float]:
  """(everything the server sent until it closed, seconds it took)."""
  start, data = time.monotonic(), b''
  while chunk := client.recv(65536):
    data += chunk
  return data, time.monotonic() - start


def _post(length: int, query: str = '') -> bytes:
  return (f'POST /{query} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n'
          '\r\n').encode()


def test_half_sent_headers_are_answered_408_and_closed(port):
  clients = [_connect(port) for _ in range(8)]
  for client in clients:
    client.sendall(b'POST / HTTP/1.1\r\nHost: x\r\n')
  for client in clients:
    data, took = _read_all(client)
    assert data.startswith(b'HTTP/1.1 408 ') and took < HEADER + 1.0
    assert json.loads(data.split(b'\r\n\r\n', 1)[1]) == {
        'error': 'the headers did not arrive within 0.6 s (--header_timeout)'}
    client.close()


def test_headers_trickled_a_byte_at_a_time_still_meet_one_deadline(port):
  client = _connect(port)
  start = time.monotonic()
  request = _post(0)
  for byte in request[:-1]:
    try:
      client.sendall(bytes([byte]))
    except OSError:  # closed by the server
      break
    time.sleep(0.05)
  data, _ = _read_all(client)
  assert data.startswith(b'HTTP/1.1 408 ') and time.monotonic() - start < HEADER + 1.0


def test_a_body_that_stops_coming_is_closed_at_the_request_deadline(port):
  client = _connect(port)
  start = time.monotonic()
  client.sendall(_post(100) + b'x' * 10)
  data, _ = _read_all(client)
  took = time.monotonic() - start
  assert data.startswith(b'HTTP/1.1 408 ') and REQUEST - 0.1 < took < REQUEST + 1.0
  assert b'the request body did not arrive within 1.5 s (--request_timeout)' in data


def test_whole_requests_are_answered_however_long_the_app_takes(port):
  client = _connect(port)
  client.sendall(_post(5, '?sleep=2') + b'hello')
  data = client.recv(65536)
  assert data.startswith(b'HTTP/1.1 200 ') and data.endswith(b'{"length": 5}')
  # Keep-alive: the next request on the connection gets deadlines of its own.
  client.sendall(b'GET / HTTP/1.1\r\n')
  data, took = _read_all(client)
  assert data.startswith(b'HTTP/1.1 408 ') and took < HEADER + 1.0


def test_the_next_request_on_a_connection_gets_its_full_header_time(port):
  client = _connect(port)
  client.sendall(_post(0, '?sleep=0.3'))  # answered at ~0.3 s; the first deadline was 0.6 s
  assert client.recv(65536).startswith(b'HTTP/1.1 200 ')
  time.sleep(0.45)  # past the first request's deadline, within the next one's (~0.9 s)
  client.sendall(_post(2) + b'ok')
  data = client.recv(65536)
  assert data.startswith(b'HTTP/1.1 200 ') and data.endswith(b'{"length": 2}'), data
  client.close()


def test_a_body_sent_slowly_within_the_deadline_is_served(port):
  client = _connect(port)
  client.sendall(_post(8))
  for _ in range(8):
    time.sleep(0.1)  # the headers' deadline passes; the request's does not
    client.sendall(b'y')
  data = client.recv(65536)
  assert data.startswith(b'HTTP/1.1 200 ') and data.endswith(b'{"length": 8}')
  client.close()


def test_deadlines_are_checked():
  with pytest.raises(ValueError, match=r'^header_timeout=5 and request_timeout=1: accepted '):
    slow_clients.with_deadlines(object, 5, 1)
