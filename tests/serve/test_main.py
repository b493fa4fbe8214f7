import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from hashjax.serve import __main__ as serve_command
from hashjax.serve import uploads
from tests import ROOT


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_server(workdir, port, *extra):
  """A `python -m hashjax.serve` process, once its health endpoint answers; its output goes
  to server.log beside the workdir."""
  log_path = os.path.join(os.path.dirname(os.path.abspath(workdir)), 'server.log')
  with open(log_path, 'a') as log:
    proc = subprocess.Popen([sys.executable, '-m', 'hashjax.serve', f'--workdir={workdir}',
                             f'--port={port}', *extra], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
  deadline = time.time() + 180
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f'the server exited: {open(log_path).read()[-2000:]}')
    try:
      with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/health', timeout=2):
        return proc
    except OSError:
      time.sleep(0.3)
  proc.kill()
  proc.wait()
  raise AssertionError('the server did not answer within 180 s')


def post_image(port, body: bytes, label=None, timeout=30):
  url = f'http://127.0.0.1:{port}/api/items' + ('' if label is None else f'?label={label}')
  request = urllib.request.Request(url, data=body, headers={'Content-Type': 'image/png'})
  with urllib.request.urlopen(request, timeout=timeout) as response:
    return json.loads(response.read())


@pytest.mark.parametrize('args, message', [
    (['--workdir=/nonexistent/run'], "--workdir='/nonexistent/run' does not exist"),
    (['--workdir=.', '--port=70000'], '--port=70000 is out of range; accepted: 0..65535'),
    (['--workdir=.', '--max_upload_mb=0'], '--max_upload_mb=0.0 is out of range'),
    (['--workdir=.'], 'must be a finished train.py run'),
    (['--workdir=.', '--token='], '--token must be printable ASCII without spaces'),
    (['--workdir=.', '--token=sé same'], '--token must be printable ASCII without spaces'),
])
def test_bad_arguments_are_one_line_errors(args, message, tmp_path, capsys):
  args = [a.replace('--workdir=.', f'--workdir={tmp_path}') for a in args]
  try:  # in this process; the shell's view: the test below
    code = serve_command.run(args)
  except SystemExit as e:
    code = e.code
  assert code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('serve: error: ') and message in lines[0]


def test_the_shell_sees_exit_2_and_one_line():
  proc = subprocess.run([sys.executable, '-m', 'hashjax.serve', '--workdir=/nonexistent/run'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr == "serve: error: --workdir='/nonexistent/run' does not exist\n"


def test_a_port_in_use_is_one_line_before_serving(served_run, tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  shutil.copytree(served_run, workdir)
  with socket.socket() as taken:
    taken.bind(('127.0.0.1', 0))
    taken.listen()
    port = taken.getsockname()[1]
    assert serve_command.run([f'--workdir={workdir}', f'--port={port}']) == 2
  out, err = capsys.readouterr()
  assert out == ''  # no "serving at ..." first
  assert err == (f'serve: error: cannot listen on 127.0.0.1:{port} (Address already in use); '
                 'choose another --port or stop what uses it\n')


def test_kill_9_during_adds_keeps_every_acknowledged_add(served_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(served_run, workdir)
  port = _free_port()
  server = start_server(workdir, port)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (400, 8, 8, 1), dtype=np.uint8)
  acknowledged, stop, unexpected = {}, threading.Event(), []

  def add():
    for i, image in enumerate(images):
      if stop.is_set():
        return
      try:
        acknowledged[post_image(port, uploads.encode_png(image), label=i % 10)['added'][0]] = i
      except (OSError, http.client.HTTPException, json.JSONDecodeError):
        return  # the server died during this request: it was never acknowledged
      except Exception as e:  # pylint: disable=broad-except  # reported by the test, not lost
        unexpected.append(e)
        return

  thread = threading.Thread(target=add)
  thread.start()
  while len(acknowledged) < 20 and thread.is_alive():
    time.sleep(0.05)
  server.send_signal(signal.SIGKILL)
  server.wait()
  stop.set()
  thread.join()
  assert not unexpected and len(acknowledged) >= 20
  port = _free_port()
  server = start_server(workdir, port)
  try:
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/stats') as response:
      stats = json.loads(response.read())
    assert len(acknowledged) <= stats['added'] <= len(acknowledged) + 1
    for item, i in acknowledged.items():
      with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/items/{item}.png') as response:
        got = np.asarray(Image.open(io.BytesIO(response.read())))
      np.testing.assert_array_equal(got, images[i][..., 0])
  finally:
    server.terminate()
    server.wait(timeout=60)


def test_half_sent_requests_are_closed_and_leave_no_traceback(served_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(served_run, workdir)
  port = _free_port()
  server = start_server(workdir, port, '--header_timeout=1', '--request_timeout=2')
  try:
    heads = [socket.create_connection(('127.0.0.1', port), timeout=20) for _ in range(4)]
    bodies = [socket.create_connection(('127.0.0.1', port), timeout=20) for _ in range(4)]
    start = time.monotonic()
    for client in heads:
      client.sendall(b'POST /api/items HTTP/1.1\r\nHost: 127.0.0.1\r\n')
    for client in bodies:
      client.sendall(b'POST /api/items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png'
                     b'\r\nContent-Length: 1000\r\n\r\n' + b'\x89PNG' * 4)
    for client in heads + bodies:
      answer = b''
      while chunk := client.recv(65536):
        answer += chunk
      assert answer.startswith(b'HTTP/1.1 408 '), answer[:200]
      client.close()
    assert time.monotonic() - start < 2 + 2
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/stats', timeout=20) as response:
      assert json.loads(response.read())['added'] == 0
  finally:
    server.terminate()
    server.wait(timeout=60)
  log = open(tmp_path / 'server.log').read()
  assert 'Traceback' not in log and 'Exception' not in log, log[-3000:]
