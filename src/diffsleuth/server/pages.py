"""The page people use (``GET /``), its static files, the model card as HTML, and ``/docs``.

Everything the page needs ships in ``server/static`` (plain HTML, CSS and one script; no CDN, no
build step), so it works on a machine with no network. The page calls the same ``/v1/scan`` API
that scripts call, so what a person sees is what a script gets. A strict Content-Security-Policy
allows scripts, styles and requests from this server only (thumbnails come from ``blob:`` URLs of
the person's own files), and no inline script, so a file name that looks like HTML cannot run.
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from diffsleuth.detectors.score_maps import map_scale
from diffsleuth.verdict import OUTSIDE_DOMAIN

STATIC = files("diffsleuth.server") / "static"
# Only these files are served from the package (no path from the request reaches the file system).
STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "cards.js": "text/javascript; charset=utf-8",
                "app.css": "text/css; charset=utf-8",
                "favicon.svg": "image/svg+xml"}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def render_markdown(text: str) -> str:
    """CommonMark (+ tables) to HTML with raw HTML escaped, never passed through."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _page(title: str, body: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><link rel=\"icon\" href=\"/static/favicon.svg\">"
            "<link rel=\"stylesheet\" href=\"/static/app.css\"></head>"
            f"<body><main class=\"document\"><p><a href=\"/\">&larr; Back to the page</a></p>{body}</main></body></html>")


def coverage_html(metrics_path: Path | None) -> str:
    """What the detector called ``generated`` on sets it never trained on, from its card's metrics.

    The rows come from ``verdict_rates`` in ``card_metrics.json`` (measured by
    ``diffsleuth.evaluation.verdict_rates``), first degradation only; a detector without them gets
    nothing, never a claim made up for it.
    """
    try:
        rates = json.loads(metrics_path.read_text(encoding="utf-8"))["verdict_rates"]
        spec, classes = rates["degradations"][0], rates.get("classes", {})
        rows = [(name[:-len(spec) - 1], classes.get(name, ""),
                 int(block["generated"]["k"]), int(block[OUTSIDE_DOMAIN]["k"]), int(block["generated"]["n"]))
                for name, block in rates["sets"].items() if name.endswith("/" + spec)]
    except (OSError, AttributeError, ValueError, KeyError, IndexError, TypeError):
        return ""
    if not rows:
        return ""
    quality = spec.replace("jpeg:", "JPEG quality ") if spec.startswith("jpeg:") else spec
    cells = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(kind)}</td>"
        f"<td>{k} of {n} ({k / n:.0%})</td><td>{out}</td></tr>" for name, kind, k, out, n in rows if n)
    return ("<h3 id=\"coverage-title\">Measured on images it never trained on</h3>"
            "<p>How often this detector said <strong>generated</strong>, at its threshold, on each set "
            f"(every file re-encoded as {html.escape(quality)}). For generated images that is the share "
            "caught; for real photos, the share wrongly flagged. A low catch rate means the detector does "
            "not cover that kind of generator: its <strong>no trace found</strong> says nothing there. Where "
            "real photos of a kind (faces, say) are flagged about as often as generated ones are caught, its "
            "<strong>generated</strong> says nothing about that kind either; where most are "
            "<strong>outside the detector's domain</strong>, it does not judge that kind at all.</p>"
            "<div class=\"table-scroll\"><table class=\"coverage\" aria-labelledby=\"coverage-title\">"
            "<thead><tr><th scope=\"col\">images</th><th scope=\"col\">class</th>"
            "<th scope=\"col\">said generated</th><th scope=\"col\">outside its domain</th></tr></thead>"
            f"<tbody>{cells}</tbody></table></div>")


def pages_router(max_files: int, max_file_bytes: int, model_card: Path | None = None,
                 max_request_bytes: int | None = None, score_map_label: str = "P(generated)") -> APIRouter:
    """Routes for people: ``/``, ``/static/*``, ``/model-card`` and ``/docs`` (not in the OpenAPI).

    The page sends its files in batches within ``max_files``, ``max_file_bytes`` and
    ``max_request_bytes`` (the server's limits; the last one unknown when None), and shows a file
    over a limit as an error card without sending it. ``score_map_label`` says what a cell of the
    detector's score map holds (the page's legend; LaRE²'s is not a probability).
    """
    router = APIRouter(include_in_schema=False)
    index = (STATIC / "index.html").read_text(encoding="utf-8")
    limits = {"max_files": int(max_files), "max_file_bytes": int(max_file_bytes),
              "max_request_bytes": "" if max_request_bytes is None else int(max_request_bytes)}
    for key, value in limits.items():
        index = index.replace("{{%s}}" % key, str(value))
    index = index.replace("{{score_map_label}}", html.escape(score_map_label, quote=True))
    # the page draws its overlays with the CLI's colour scale (detectors/score_maps.py)
    index = index.replace("{{map_scale}}", html.escape(json.dumps(map_scale()), quote=True))
    has_card = model_card is not None and model_card.is_file()
    index = index.replace("{{has_model_card}}", "true" if has_card else "false")
    index = index.replace("{{coverage}}", coverage_html(model_card.parent / "card_metrics.json") if has_card else "")

    @router.get("/")
    def page() -> HTMLResponse:
        return HTMLResponse(index, headers=SECURITY_HEADERS)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_TYPES:
            raise HTTPException(404, "no such file")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name], headers=SECURITY_HEADERS)

    @router.get("/model-card")
    def card() -> HTMLResponse:
        if not has_card:
            raise HTTPException(404, "this detector ships no model card")
        body = render_markdown(model_card.read_text(encoding="utf-8"))
        return HTMLResponse(_page("Model card", f"<article class=\"model-card\">{body}</article>"),
                            headers=SECURITY_HEADERS)

    @router.get("/docs")
    def docs() -> RedirectResponse:
        # FastAPI's Swagger UI loads its scripts from a CDN (blank offline); the page's API section
        # says how to call /v1/scan and links the OpenAPI schema at /openapi.json instead.
        return RedirectResponse("/#api", status_code=307)

    return router
