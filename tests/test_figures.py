"""The asset pages' pictures (pipelines/figures.py): a one-line Markdown image the UI shows in
place, named by its content, served on loopback; embedded when no figure server is set."""

import base64
import hashlib
import threading
import urllib.error
import urllib.request

import pytest

from helpers.devserver import free_port
from pipelines import figures

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # 10 KB: as data, far past the UI's 1,000 characters


def test_without_a_figure_server_the_picture_is_embedded(monkeypatch):
    monkeypatch.delenv(figures.DIR_ENV, raising=False)
    monkeypatch.delenv(figures.URL_ENV, raising=False)
    text = figures.markdown_image(PNG, "curves")
    assert text.startswith("![curves](data:image/png;base64,")
    assert base64.b64decode(text.split(",", 1)[1][:-1]) == PNG


def test_with_one_the_markdown_is_short_and_names_the_picture_by_its_content(monkeypatch, tmp_path):
    monkeypatch.setenv(figures.DIR_ENV, str(tmp_path / "figures"))
    monkeypatch.setenv(figures.URL_ENV, "http://127.0.0.1:3001/")
    text = figures.markdown_image(PNG, "curves")
    name = hashlib.sha256(PNG).hexdigest()[:32] + ".png"
    assert text == f"[![curves](http://127.0.0.1:3001/{name})](http://127.0.0.1:3001/{name})"
    assert len(text) < 1000  # the UI renders Markdown in place only below that
    assert (tmp_path / "figures" / name).read_bytes() == PNG
    assert figures.markdown_image(PNG, "again").endswith(f"/{name})")  # same bytes, same file
    other = figures.markdown_image(PNG + b"x", "other")
    assert name not in other and len(list((tmp_path / "figures").iterdir())) == 2  # no temp file left


@pytest.fixture
def server(tmp_path):
    port = free_port()
    handler = type("H", (figures.Handler,), {"folder": tmp_path})
    httpd = figures.http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{port}"
    httpd.shutdown()
    httpd.server_close()


def status(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read(), reply.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, b"", ""


def test_the_server_answers_only_pictures_named_by_digest(server):
    folder, url = server
    name = "0123456789abcdef0123456789abcdef.png"
    (folder / name).write_bytes(PNG)
    (folder / "notes.txt").write_text("not a picture")
    assert status(f"{url}/{name}") == (200, PNG, "image/png")
    assert status(f"{url}/{name}?v=1")[0] == 200
    for path in ("/", "/notes.txt", "/ffffffffffffffffffffffffffffffff.png", "/../figures.py",
                 f"/%2e%2e/{name}", f"/x/{name}"):
        assert status(url + path)[0] == 404, path
