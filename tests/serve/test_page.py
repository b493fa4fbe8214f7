"""The search page in a real headless browser: Chromium and chromedriver from the
distribution (apt-get install chromium chromium-driver), driven by Selenium.

Skipped when they are missing, unless HASHJAX_REQUIRE_BROWSER=1 (CI sets it: there it fails).
HASHJAX_SCREENSHOT=PATH saves a screenshot of the page with results (docs/images/serve.png).
"""

import os
import shutil

import pytest

from hashjax.serve import uploads
from tests.serve.test_main import _free_port, start_server

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
DRIVER = shutil.which('chromedriver')


@pytest.fixture
def browser():
  if not (CHROMIUM and DRIVER):
    if os.environ.get('HASHJAX_REQUIRE_BROWSER') == '1':
      pytest.fail('HASHJAX_REQUIRE_BROWSER=1 but chromium/chromedriver are missing: '
                  'apt-get install chromium chromium-driver')
    pytest.skip('needs chromium and chromedriver: apt-get install chromium chromium-driver')
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
               '--window-size=1200,900'):
    options.add_argument(flag)
  driver = webdriver.Chrome(options=options,
                            service=webdriver.ChromeService(executable_path=DRIVER))
  yield driver
  driver.quit()


def _wait(driver, condition, timeout=60):
  """Waits until `condition(driver)` is truthy (a re-rendered element is looked up again)."""
  from selenium.common import exceptions  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  return WebDriverWait(driver, timeout,
                       ignored_exceptions=(exceptions.StaleElementReferenceException,)
                       ).until(condition)


def _all(driver, css, count=1):
  """Waits for at least `count` elements matching `css`; returns them."""
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  return _wait(driver, lambda d: (found := d.find_elements(By.CSS_SELECTOR, css)) and
               len(found) >= count and found)


def _query_text_starts(prefix):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  return lambda d: d.find_element(By.CSS_SELECTOR, '#query div').text.startswith(prefix)


def test_click_a_query_see_k_results_follow_one_and_upload_an_image(browser, served_run,
                                                                     tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top

  from hashjax.data import sources as data_lib  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  shutil.copytree(served_run, workdir)
  port = _free_port()
  server = start_server(workdir, port)
  try:
    browser.get(f'http://127.0.0.1:{port}/')
    gallery = _all(browser, '#gallery img.query', 48)
    gallery[3].click()
    _wait(browser, _query_text_starts('query 3'))
    results = _all(browser, '#results .result', 10)
    assert len(results) == 10  # topk = 10, the page's default
    assert 'AP ' in browser.find_element(By.ID, 'summary').text
    item = results[4].get_attribute('data-item')
    results[4].click()  # a result becomes the query
    _wait(browser, _query_text_starts(f'database item {item}'))
    upload = tmp_path / 'mine.png'  # a digit as a user might have it: 32×32 pixels
    upload.write_bytes(uploads.encode_png(data_lib.load_source('digits').images([100])[0], 4))
    browser.find_element(By.ID, 'upload').send_keys(str(upload))
    _wait(browser, _query_text_starts('uploaded image'))
    assert len(_all(browser, '#results .result', 10)) == 10
    gallery[3].click()
    _wait(browser, _query_text_starts('query 3'))
    _all(browser, '#results .result', 10)
    if os.environ.get('HASHJAX_SCREENSHOT'):
      browser.save_screenshot(os.environ['HASHJAX_SCREENSHOT'])
  finally:
    server.terminate()
    server.wait(timeout=60)
