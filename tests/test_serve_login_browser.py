"""The web page behind API keys, in a real browser (Debian chromium via Playwright, real uvicorn on loopback):
the page asks for a key, signs in, analyses a field; a page on another origin cannot make the server work.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser import BROWSER_MARKS, live_server, watch

pytestmark = BROWSER_MARKS
pytest.importorskip("uvicorn")

from test_analyze import make_colour_classifier  # noqa: E402
from test_web_page import draw_smear  # noqa: E402
from wbc.model import load_model  # noqa: E402
from wbc.segment.classical import ClassicalSegmenter  # noqa: E402
from wbc.serve.app import create_app  # noqa: E402
from wbc.serve.settings import ServeSettings  # noqa: E402

KEY = "browser-key-0123456789abcdef"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the wbc server with a key, a plain "other site" on another port serving one attacking page)."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    clf = load_model(make_colour_classifier(tmp_path_factory.mktemp("lb") / "m.onnx", size=48), threads=1)
    with live_server(create_app(clf, ClassicalSegmenter(), settings=ServeSettings(api_keys=[KEY]))) as base:
        attack = f"""<!doctype html><body><script>
          const fd = new FormData(); fd.append("counts", "x");
          fetch("{base}/differential", {{method: "POST", credentials: "include",
                headers: {{"Content-Type": "text/plain"}}, body: '{{"counts": {{"neutrophil": 1}}}}'}})
            .then(r => document.title = "status " + r.status).catch(e => document.title = "blocked");
        </script></body>"""
        with live_server(Starlette(routes=[Route("/", lambda _r: HTMLResponse(attack))])) as evil_base:
            yield base, evil_base


def test_the_page_signs_in_with_a_key_then_analyses(chromium, servers: tuple[str, str], tmp_path: Path) -> None:
    base, evil_base = servers
    field = tmp_path / "field.png"
    cv2.imwrite(str(field), draw_smear()[:, :, ::-1])
    ctx = chromium.new_context()
    page = ctx.new_page()
    errors = watch(page)
    page.goto(base + "/")
    assert page.locator("form[action='/login']").is_visible()  # no key yet: the sign-in form
    page.fill("#key", "not-the-key-0123456789")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text().startswith("That key is not valid")
    page.fill("#key", KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)  # the page, its /health and /model
    page.set_input_files("#file-input", str(field))
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("img.annotated").count() == 1

    # the same signed-in browser visits another site, whose script posts to wbc: refused
    page.goto(evil_base + "/")
    page.wait_for_function("document.title !== ''", timeout=15_000)
    assert page.title() in ("status 403", "blocked")
    ctx.close()
    assert not errors, errors


def test_sign_out_and_sign_in_again_on_the_page_one_was_on(chromium, servers: tuple[str, str]) -> None:
    base, _ = servers
    ctx = chromium.new_context()
    page = ctx.new_page()
    errors = watch(page, only=base)
    page.goto(base + "/review?case=7")  # a bookmarked case: the form, then back to it
    page.fill("#key", KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    assert page.url == base + "/review?case=7"

    ctx.clear_cookies()  # the session is gone (a server restart ends every session): the page's next request
    page.evaluate("() => { loadCases(); }")  # ... goes to the form, which comes back here
    page.wait_for_selector("form[action='/login']", timeout=15_000)
    page.fill("#key", KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    assert page.url == base + "/review?case=7"

    for path in ("/review", "/"):  # both pages can sign out
        page.goto(base + path)
        page.wait_for_selector("body[data-ready=true]", timeout=15_000)
        page.click("#sign-out button")
        page.wait_for_selector("form[action='/login']")
        assert page.request.get(base + "/model").status == 401  # the session ended on the server
        page.fill("#key", KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-ready=true]", timeout=15_000)
        assert page.url == base + "/"
    ctx.close()
    assert not errors, errors


def test_an_allowed_same_site_page_cannot_post_on_the_reviewer_s_session(chromium, tmp_path: Path) -> None:
    """A page of an --allowed-origin site on the same site (here 127.0.0.1, another port) posting with
    ``credentials: "include"``: chromium sends the SameSite=Strict session cookie along, and wbc 0.29.0 took the
    request as the signed-in reviewer's. Now it needs a key of its own (401); the browser's own page still works."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    seen: list[tuple[str, bool, int]] = []  # (Origin, whether the session cookie came, status) of each POST

    def recording(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/differential":
                return await app(scope, receive, send)
            h = {k.decode().lower(): v.decode() for k, v in scope["headers"]}

            async def spy(message: Message) -> None:
                if message["type"] == "http.response.start":
                    seen.append((h.get("origin", ""), "wbc_session=" in h.get("cookie", ""), message["status"]))
                await send(message)

            return await app(scope, receive, spy)

        return wrapped

    page_html: dict[str, str] = {}
    with live_server(Starlette(routes=[Route("/", lambda _r: HTMLResponse(page_html["html"]))])) as lims:
        clf = load_model(make_colour_classifier(tmp_path / "m.onnx", size=48), threads=1)
        app = create_app(clf, ClassicalSegmenter(), settings=ServeSettings(api_keys=[KEY], allowed_origins=[lims]))
        with live_server(recording(app)) as base:
            page_html["html"] = f"""<!doctype html><body><script>
              fetch("{base}/differential", {{method: "POST", credentials: "include",
                    headers: {{"Content-Type": "text/plain"}}, body: '{{"counts": {{"neutrophil": 1}}}}'}})
                .then(r => document.title = "status " + r.status).catch(e => document.title = "blocked");
            </script></body>"""
            ctx = chromium.new_context()
            page = ctx.new_page()
            page.goto(base + "/")
            page.fill("#key", KEY)
            page.click("button[type=submit]")
            page.wait_for_selector("body[data-ready=true]", timeout=15_000)
            page.goto(lims + "/")
            page.wait_for_function("document.title !== ''", timeout=15_000)
            ctx.close()
    assert seen == [(lims, True, 401)], seen  # the cookie went along, and did not count
