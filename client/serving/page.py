"""The staff web page: one static HTML file (no data inside) that reads the API with the key staff type in.

The shell is served without a key because a browser cannot send a bearer token on navigation; everything it
shows comes from authenticated JSON calls, and it writes data into the page with ``textContent`` only, so an
item title or customer id can never inject markup.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def page_html() -> str:
    return resources.files("client.serving").joinpath("static/index.html").read_text(encoding="utf-8")
