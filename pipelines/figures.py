"""Pictures the Dagster UI shows inline. The UI renders a Markdown metadata value in place only
when it is short (under 1,000 characters); a PNG inside the Markdown is far longer, so it sits
behind a "[Show Markdown]" click. So each picture is written once, named by its content, to a
folder that a small loopback HTTP server (``python -m pipelines.figures``, started by
`make serve` and `make ui`) serves, and the metadata is a one-line Markdown image pointing at
it. Names are content digests: an older materialization keeps showing its own picture.

BYOL_FIGURE_DIR and BYOL_FIGURE_URL (set by scripts/serve.sh and scripts/ui.sh) turn this on;
without them (a bare `dg dev`) the picture is embedded in the Markdown itself."""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import os
import re
from pathlib import Path

DIR_ENV, URL_ENV = "BYOL_FIGURE_DIR", "BYOL_FIGURE_URL"
NAME = re.compile(r"^/([0-9a-f]{32})\.png$")


def markdown_image(png: bytes, title: str) -> str:
    """``![title](URL)`` (a link to itself) when a figure server is configured, else the PNG
    inline as data."""
    folder, url = os.environ.get(DIR_ENV), os.environ.get(URL_ENV)
    if not (folder and url):
        return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"
    name = hashlib.sha256(png).hexdigest()[:32] + ".png"
    path = Path(folder) / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{name}.{os.getpid()}")
        temp.write_bytes(png)
        os.replace(temp, path)  # a reader never sees half a picture
    link = f"{url.rstrip('/')}/{name}"
    return f"[![{title}]({link})]({link})"  # a click opens it full size where the column crops it


class Handler(http.server.BaseHTTPRequestHandler):
    """GET /<digest>.png from the folder, nothing else: no listing, no other path."""

    folder: Path

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        match = NAME.match(self.path.split("?", 1)[0])
        path = self.folder / f"{match.group(1)}.png" if match else None
        if path is None or not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")  # named by content
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        pass  # one line per picture fetched is noise in the serve logs


def serve(folder: Path, host: str, port: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    handler = type("FigureHandler", (Handler,), {"folder": folder})
    with http.server.ThreadingHTTPServer((host, port), handler) as server:
        print(f"figures: serving {folder} on http://{host}:{port}", flush=True)
        server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the asset pages' pictures on loopback.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    args = parser.parse_args()
    try:
        serve(args.folder, args.host, args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
