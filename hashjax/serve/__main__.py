"""`python -m hashjax.serve --workdir=RUN [--host=127.0.0.1] [--port=8000] [--token=T]`.

Serves a finished train.py run's database: the page at http://HOST:PORT/ and the JSON API
under /api (see `hashjax.serve.app`). Needs the `serve` extra (pip install -e ".[serve]").
`--recover_store` instead copies every add of a damaged `RUN/served/added.bin` that still
checks out into a new store and exits (`hashjax.serve.recovery`).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

EXIT_BAD_INPUT = 2
LOOPBACK = ('127.0.0.1', 'localhost', '::1')


def _parse(argv):
  parser = argparse.ArgumentParser(prog='python -m hashjax.serve',
                                   description='Search service over a trained run.')
  parser.add_argument('--workdir', required=True, help='a finished train.py run directory')
  parser.add_argument('--host', default='127.0.0.1',
                      help='address to bind (default 127.0.0.1: this machine only)')
  parser.add_argument('--port', type=int, default=8000, help='TCP port (default 8000)')
  parser.add_argument('--token', default=os.environ.get('HASHJAX_SERVE_TOKEN'),
                      help='adding images needs "Authorization: Bearer TOKEN" (default: the '
                      'HASHJAX_SERVE_TOKEN environment variable; unset: no token needed)')
  parser.add_argument('--max_topk', type=int, default=1000,
                      help='largest topk a search may ask for')
  parser.add_argument('--max_upload_mb', type=float, default=8.0,
                      help='largest request body in MiB (default 8)')
  parser.add_argument('--max_batch', type=int, default=64, help='images per model call')
  parser.add_argument('--header_timeout', type=float, default=10.0,
                      help="seconds a request's headers may take to arrive (default 10)")
  parser.add_argument('--request_timeout', type=float, default=60.0,
                      help='seconds a whole request, headers and body, may take to arrive '
                      '(default 60: an 8 MiB upload at 140 KB/s)')
  parser.add_argument('--recover_store', action='store_true',
                      help='copy every add of a damaged served/added.bin that still checks out '
                      'into a new store (the old file is kept as added.bin.damaged), then exit')

  def one_line_error(message):
    print(f'serve: error: {message}', file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)

  parser.error = one_line_error
  args = parser.parse_args(argv)
  for name, low, high in (('port', 0, 65535), ('max_topk', 1, 10**6), ('max_batch', 1, 4096)):
    if not low <= getattr(args, name) <= high:
      one_line_error(f'--{name}={getattr(args, name)} is out of range; '
                     f'accepted: {low}..{high}')
  if args.token is not None and (not args.token or not args.token.isascii() or
                                 not args.token.isprintable() or ' ' in args.token):
    one_line_error('--token must be printable ASCII without spaces, and not empty')
  if not 0 < args.header_timeout <= args.request_timeout <= 3600:
    one_line_error(f'--header_timeout={args.header_timeout} and --request_timeout='
                   f'{args.request_timeout}: accepted 0 < header_timeout ≤ request_timeout '
                   '≤ 3600 (seconds)')
  if not 0 < args.max_upload_mb <= 1024:
    one_line_error(f'--max_upload_mb={args.max_upload_mb} is out of range; accepted: (0, 1024]')
  return args


def run(argv=None) -> int:
  """The command; returns the exit code (2 on bad input)."""
  args = _parse(argv)
  try:
    import uvicorn  # pylint: disable=g-import-not-at-top

    from hashjax.serve import slow_clients  # pylint: disable=g-import-not-at-top
    from hashjax.serve.app import create_app  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f'serve: error: {e.name} is missing; install the serve extra: pip install -e '
          '".[serve]"', file=sys.stderr)
    return EXIT_BAD_INPUT
  from hashjax.serve.service import SearchService  # pylint: disable=g-import-not-at-top
  _large_image_blocks()
  if not os.path.isdir(args.workdir):
    print(f'serve: error: --workdir={args.workdir!r} does not exist', file=sys.stderr)
    return EXIT_BAD_INPUT
  if args.recover_store:
    return _recover_store(args.workdir)
  try:
    service = SearchService(args.workdir, max_topk=args.max_topk, max_batch=args.max_batch)
  except (ValueError, OSError) as e:  # ConfigError, SearchError, StoreError, DataError
    print(f'serve: error: {" ".join(str(e).split())}', file=sys.stderr)
    return EXIT_BAD_INPUT
  try:
    service.warm_up()
    loopback = args.host in LOOPBACK
    if not loopback and args.token is None:
      print(f'serve: warning: listening on {args.host} without --token: anyone who can reach '
            'it can add images', file=sys.stderr)
    app = create_app(service, token=args.token,
                     max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                     allowed_hosts=LOOPBACK if loopback else None)
    try:
      sock = _bind(args.host, args.port)
    except OSError as e:
      print(f'serve: error: cannot listen on {args.host}:{args.port} ({e.strerror or e}); '
            'choose another --port or stop what uses it', file=sys.stderr)
      return EXIT_BAD_INPUT
    print(f'serving {service.stats()["database"]} items of {args.workdir} at '
          f'http://{args.host}:{sock.getsockname()[1]}/', flush=True)
    http = slow_clients.protocol(args.header_timeout, args.request_timeout)
    uvicorn.Server(uvicorn.Config(app, http=http, log_level='warning')).run(sockets=[sock])
  finally:
    service.close()
  return 0


def _large_image_blocks() -> None:
  """Pillow allocates images in 64 MiB blocks (PILLOW_BLOCK_SIZE's default is 16 MiB): blocks
  over glibc's largest mmap threshold (32 MiB) go back to the system when an upload's decode
  ends, instead of staying in the heap arenas of the decoding threads (peak RSS under 16
  clients uploading 36 M-pixel PNGs: 3.5 GiB with 16 MiB blocks, 1.4 GiB with 64 MiB)."""
  if 'PILLOW_BLOCK_SIZE' not in os.environ:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    Image.core.set_block_size(64 << 20)


def _bind(host: str, port: int) -> socket.socket:
  """A TCP socket bound to (host, port), as uvicorn would bind it; OSError when it cannot be
  (the port in use, an address not of this machine)."""
  family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
  sock = socket.socket(family, socket.SOCK_STREAM)
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
  except OSError:
    sock.close()
    raise
  return sock


def _recover_store(workdir: str) -> int:
  from hashjax.serve import recovery, service, store  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, store.FILE)
  try:
    done = recovery.recover(path, service.store_layout(workdir))
  except (ValueError, OSError) as e:  # StoreError, ConfigError, SearchError, DataError
    print(f'serve: error: {" ".join(str(e).split())}', file=sys.stderr)
    return EXIT_BAD_INPUT
  print(f'recovered {done.items} added items ({done.records} records) into {path}; '
        f'{done.skipped_bytes} damaged bytes skipped; the old file is kept at {done.damaged}')
  return 0


def main():
  logging.basicConfig(level=logging.WARNING)
  sys.exit(run())


if __name__ == '__main__':
  main()
