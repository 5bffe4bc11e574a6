"""Make the README's pictures in ``images/`` from the shipped example fields (nothing else is needed).

* ``annotated_<field>.jpg``: two example fields as ``wbc analyze`` draws them (shipped model and segmenter);
* ``web_page.png``: the web page after analysing three example fields;
* ``review_page.png``: the review page of a case made of those fields, one cell reclassified;
* ``case_report.png``: the printable report of that case after sign-off.

Pages are shot with Debian's Chromium through Playwright (``apt-get install chromium``; no browser is
downloaded), against a real ``wbc serve`` app on loopback with a throw-away case store::

    python scripts/make_readme_images.py            # writes images/*.png, images/*.jpg
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import cv2

CHROMIUM = "/usr/bin/chromium"
ANNOTATED = ("BloodImage_00031", "BloodImage_00132")
PAGE_FIELDS = ("BloodImage_00031", "BloodImage_00015", "BloodImage_00041")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def annotated_fields(out: Path, clf: object, seg: object, fields: dict[str, Path]) -> list[Path]:
    from wbc.analyze import analyze_image, smear_label_set
    from wbc.io import read_image
    from wbc.render import render

    written = []
    for stem in ANNOTATED:
        rgb = read_image(fields[stem])
        res = analyze_image(rgb, clf, seg, name=fields[stem].name)
        path = out / f"annotated_{stem}.jpg"
        drawn = render(rgb, res, smear_label_set(clf), float(clf.info.review_threshold))  # as wbc analyze draws it
        cv2.imwrite(str(path), drawn[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=Path("images"))
    args = ap.parse_args(argv)

    import uvicorn
    from playwright.sync_api import sync_playwright

    from wbc.analyze import analyze_image
    from wbc.cases.report import render_html
    from wbc.cases.store import CaseStore, create_case_from_fields
    from wbc.examples import example_fields
    from wbc.io import read_image
    from wbc.model import load_model
    from wbc.segment import get_segmenter
    from wbc.serve.app import create_app
    from wbc.serve.settings import ServeSettings

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    fields = {p.stem: p for p in example_fields()}
    clf = load_model(None, threads=2)
    seg = get_segmenter("auto", None, threads=2)
    written = annotated_fields(out, clf, seg, fields)

    with tempfile.TemporaryDirectory() as tmp:
        store = CaseStore.open(Path(tmp) / "cases.sqlite")
        analysed = []
        for stem in PAGE_FIELDS:
            rgb = read_image(fields[stem])
            analysed.append((fields[stem].name, rgb, analyze_image(rgb, clf, seg, name=fields[stem].name)))
        seg_id = str(getattr(seg, "model_id", "") or getattr(seg, "name", ""))
        case = create_case_from_fields(store, "Example smear, 3 fields", analysed, clf, seg_id, "A. Tech")
        doc = store.case_document(case)
        first = doc["cells"][0]
        store.reclassify(case, first["id"], "lymphocyte", "A. Tech", "nucleus round, scant cytoplasm")

        app = create_app(clf, seg, store=store, settings=ServeSettings(api_keys=[]))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                ctx = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
                page = ctx.new_page()
                page.goto(base + "/")
                page.wait_for_selector("body[data-ready=true]", timeout=30_000)
                page.set_input_files("#file-input", [str(fields[s]) for s in PAGE_FIELDS])
                page.click("#run-button")
                page.wait_for_selector("#status:has-text('Done')", timeout=120_000)
                page.screenshot(path=str(out / "web_page.png"), full_page=False)
                written.append(out / "web_page.png")

                page.goto(f"{base}/review?case={case}")
                page.wait_for_load_state("networkidle")
                time.sleep(1.0)
                page.screenshot(path=str(out / "review_page.png"), full_page=False)
                written.append(out / "review_page.png")

                store.sign_off(case, "A. Tech")
                report = Path(tmp) / "report.html"
                report.write_text(render_html(store, case), encoding="utf-8")
                page.goto(report.as_uri())
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(out / "case_report.png"), full_page=False)
                written.append(out / "case_report.png")
                browser.close()
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            store.close()
    for p in written:
        print(f"{p} ({p.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
