import io
import os
import shutil
import subprocess

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from hashjax.serve import uploads
from hashjax.serve.app import create_app
from hashjax.serve.service import SearchService
from tests.serve.test_store import failing_pwrite

TOKEN = 'sesame'


@pytest.fixture(scope='module')
def served(served_run, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('app') / 'run')
  shutil.copytree(served_run, workdir)
  service = SearchService(workdir)
  client = TestClient(create_app(service, token=TOKEN, max_upload_bytes=64 << 10))
  yield service, client
  service.close()


def _png(service, item):
  return uploads.encode_png(service.item_image(item))


def _image_bytes(size, mode='L', fmt='PNG'):
  buffer = io.BytesIO()
  Image.new(mode, size, 0).save(buffer, format=fmt)
  return buffer.getvalue()


def test_health_stats_page_and_images(served):
  service, client = served
  assert client.get('/api/health').json() == {'status': 'ok', 'database': len(service.index)}
  stats = client.get('/api/stats').json()
  assert stats['bits'] == 16 and stats['queries'] == 50 and stats['labels'] == 'class'
  page = client.get('/')
  assert page.status_code == 200 and 'id="gallery"' in page.text
  png = client.get('/api/items/3.png', params={'scale': 4})
  assert png.headers['content-type'] == 'image/png'
  assert Image.open(io.BytesIO(png.content)).size == (32, 32)
  query = Image.open(io.BytesIO(client.get('/api/queries/0.png').content))
  np.testing.assert_array_equal(np.asarray(query), service.query_image(0)[..., 0])


def test_search_by_query_item_and_upload_agree_with_the_service(served):
  service, client = served
  assert client.get('/api/search', params={'query': 2, 'topk': 7}).json() == \
      service.search_query(2, 7)
  assert client.get('/api/search', params={'item': 11, 'topk': 5, 'radius': 2}).json() == \
      service.search_item(11, 5, 2)
  body = _png(service, 40)
  raw = client.post('/api/search', params={'topk': 5}, content=body,
                    headers={'content-type': 'image/png'}).json()
  form = client.post('/api/search', params={'topk': 5},
                     files={'image': ('x.png', body, 'image/png')}).json()
  assert raw == form == service.search_image(service.item_image(40), 5)
  assert raw['ap'] is None and raw['image'] == 'upload'


def test_adding_needs_the_token_and_returns_the_new_indices(served):
  service, client = served
  body = _png(service, 12)
  refused = client.post('/api/items', content=body)
  assert refused.status_code == 401 and 'Authorization: Bearer' in refused.json()['error']
  num = len(service.index)
  auth = {'Authorization': f'Bearer {TOKEN}'}
  one = client.post('/api/items', params={'label': '3'}, content=body, headers=auth).json()
  assert one == {'added': [num], 'database': num + 1}
  files = [('image', ('a.png', body)), ('image', ('b.jpg', _image_bytes((30, 20), 'RGB', 'JPEG'))),
           ('label', (None, '1')), ('label', (None, ''))]
  two = client.post('/api/items', files=files,
                    headers={**auth, 'Origin': 'http://testserver'}).json()  # same origin
  assert two == {'added': [num + 1, num + 2], 'database': num + 3}
  assert service.index.db_labels[num:].tolist() == [3, 1, -1]
  hits = client.get('/api/search', params={'item': num, 'topk': 1000}).json()['results']
  assert {'item': num, 'distance': 0, 'label': 3, 'relevant': True, 'added': True} in hits


def test_the_auth_scheme_is_case_insensitive_and_must_be_bearer(served):
  service, client = served
  body = _png(service, 12)
  for scheme, status in (('bearer', 200), ('BEARER', 200), ('Basic', 401), ('', 401)):
    answer = client.post('/api/items', content=body,
                         headers={'Authorization': f'{scheme} {TOKEN}'.strip()})
    assert answer.status_code == status, scheme


@pytest.mark.parametrize('method, url, kwargs, status, message', [
    ('get', '/api/search?query=50', {}, 404, 'query 50 does not exist; accepted: 0..49'),
    ('get', '/api/search?item=1&topk=1001', {}, 422, 'topk=1001 is out of range; accepted: 1..1000'),
    ('get', '/api/search?query=x', {}, 422, "query='x': Input should be a valid integer"),
    ('get', '/api/search?topk=3', {}, 422, 'give exactly one of query=I'),
    ('get', '/api/items/99999.png', {}, 404, 'database item 99999 does not exist'),
    ('get', '/api/items/1.png?scale=100', {}, 422, 'scale=100 is out of range; accepted: 1..16'),
    ('get', '/api/nothing', {}, 404, 'no such endpoint: /api/nothing'),
    ('post', '/api/search', {'content': b''}, 400, 'upload is empty'),
    ('post', '/api/search', {'content': b'%PDF-1.4 not an image'}, 415,
     'upload is not an image of an accepted format (PNG, JPEG, GIF, BMP, WEBP, TIFF)'),
    ('post', '/api/search', {'content': _image_bytes((64, 64))[:-30]}, 415,
     'upload cannot be decoded'),
    ('post', '/api/search', {'content': _image_bytes((3, 50))}, 422,
     'upload is 3×50 pixels; each side must be 4..8192'),
    ('post', '/api/search', {'content': _image_bytes((9000, 9000), '1')}, 413,
     'upload is 9000×9000 pixels; at most 40,000,000 are accepted'),
    ('post', '/api/search', {'content': b'0' * (65 << 10)}, 413,
     'the request body is over the 65,536-byte limit'),
    ('post', '/api/search', {'content': iter([b'0' * (40 << 10)] * 2)}, 413,
     'the request body is over the 65,536-byte limit'),  # chunked: no declared length
    ('post', '/api/search', {'files': {'image': ('a', b'x')}, 'data': {'label': '1'}}, 415,
     'upload is not an image'),
    ('post', '/api/search', {'files': {'other': ('a', b'x')}, 'data': {'image': 'text'}}, 400,
     'multipart field image must be a file'),
    ('post', '/api/items?label=1', {'headers': {'Authorization': f'Bearer {TOKEN}'},
                                   'content': b'GIF89a'}, 415, 'image 0 is not an image'),
    ('post', '/api/search', {'content': b'x', 'headers': {'Origin': 'http://evil.example'}},
     403, 'a page of another site cannot post here (Origin http://evil.example)'),
    ('post', '/api/items', {'content': b'x', 'headers': {'Sec-Fetch-Site': 'cross-site'}},
     403, 'a page of another site cannot post here'),
    ('post', '/api/items', {'content': b'x', 'headers': {'Authorization': b'Bearer \xe9'}},
     401, 'adding images needs the header Authorization: Bearer <token>'),
    ('get', '/api/search?query=1&topk=' + '9' * 5000, {}, 422, "topk='99999999999999999999999999999999"),
    ('post', '/api/search?topk=0', {'content': b'x' * 10}, 422, 'topk=0 is out of range'),
])
def test_bad_input_gets_a_4xx_with_one_line(served, method, url, kwargs, status, message):
  _, client = served
  response = getattr(client, method)(url, **kwargs)
  error = response.json()['error']
  assert (response.status_code, message) == (status, error[:len(message)]), error
  assert '\n' not in error and len(error) < 200


def test_a_label_the_data_does_not_have_is_refused_before_anything_is_stored(served):
  service, client = served
  num = len(service.index)
  response = client.post('/api/items?label=10', content=_png(service, 1),
                         headers={'Authorization': f'Bearer {TOKEN}'})
  assert response.status_code == 422 and "label='10' is not one class id" in response.json()[
      'error']
  assert len(service.index) == num == len(service.store) + service.num_original


def test_a_full_disk_refuses_the_add_with_507_and_searches_go_on(served):
  service, client = served
  num = len(service.index)
  service.store._pwrite = failing_pwrite(room=10)  # pylint: disable=protected-access
  try:
    response = client.post('/api/items', content=_png(service, 2),
                           headers={'Authorization': f'Bearer {TOKEN}'})
  finally:
    service.store._pwrite = os.pwrite  # pylint: disable=protected-access
  assert response.status_code == 507
  error = response.json()['error']
  assert 'the add was not stored (No space left on device); free space on' in error
  assert len(service.index) == num
  assert client.get('/api/search', params={'query': 0, 'topk': 3}).status_code == 200


def test_on_a_real_full_file_system_adds_get_507_and_searches_go_on(served_run, tmp_path):
  if os.geteuid() != 0:
    pytest.skip('mounting a tmpfs needs root (CI runs as root)')
  mnt = tmp_path / 'small'
  mnt.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(mnt)]).returncode:
    pytest.skip('mount -t tmpfs failed although running as root')
  try:
    workdir = str(mnt / 'run')
    shutil.copytree(served_run, workdir)
    service = SearchService(workdir)
    client = TestClient(create_app(service, token=None))
    filler = mnt / 'filler'
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the file system to the last byte
      while os.write(fd, b'\0' * 4096):
        pass
    except OSError:
      pass
    finally:
      os.close(fd)
    num, body = len(service.index), _png(service, 5)
    for acknowledged in range(200):  # the store's last page may still hold a few adds
      response = client.post('/api/items', content=body)
      if response.status_code != 200:
        break
    assert response.status_code == 507, response.text
    assert 'No space left on device' in response.json()['error']
    assert len(service.index) == num + acknowledged
    assert client.get('/api/search', params={'query': 1, 'topk': 5}).status_code == 200
    filler.unlink()
    assert client.post('/api/items', content=body).json()['added'] == [num + acknowledged]
    service.close()
    again = SearchService(workdir)
    assert len(again.index) == num + acknowledged + 1
    again.close()
  finally:
    subprocess.run(['umount', '-l', str(mnt)], check=False)


def test_only_the_named_hosts_are_answered(served):
  service, _ = served
  client = TestClient(create_app(service, allowed_hosts=('127.0.0.1', 'localhost')))
  refused = client.get('/api/health')  # Host: testserver, like a DNS-rebinding page's name
  assert refused.status_code == 400
  assert refused.json()['error'].startswith("Host 'testserver' is not one this server answers")
  assert client.get('/api/health', headers={'Host': '127.0.0.1:8000'}).status_code == 200
  assert client.get('/api/health', headers={'Host': '[::1'}).status_code == 400
  post = client.post('/api/search', content=b'x',
                     headers={'Host': '127.0.0.1:8000', 'Origin': 'http://[::1'})
  assert post.status_code == 403
