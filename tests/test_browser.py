"""The browser harness itself: a page is loaded, read and its console errors are seen."""
from tests.browser import browser, console_errors  # noqa: F401  (fixture)


def test_browser_reads_page_and_console(browser, tmp_path):
  page = tmp_path / "p.html"
  page.write_text("<h1 id='t'>lis_jax</h1><script>console.error('boom')</script>")
  browser.get(page.as_uri())
  assert browser.find_element("id", "t").text == "lis_jax"
  errors = console_errors(browser)
  assert any("boom" in e for e in errors), errors
