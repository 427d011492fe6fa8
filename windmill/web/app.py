"""The dashboard's Flask application: server-rendered pages (Jinja2 templates, no JavaScript at all: the overview
refreshes itself with a meta refresh, detector layers switch with CSS), the pictures, and — only when started with
`allow_actions` — one POST action, retrying dead jobs, guarded against cross-site requests.

Hardening, since a dashboard on 127.0.0.1 is still reachable from any page the operator's browser opens: requests
must name this server in their Host header when it listens on a loopback address (DNS rebinding), every response
forbids scripts, framing and sniffing, and the action needs this process's secret token from its own form and a
same-origin request."""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from typing import Any

import psycopg
from flask import Flask, Response, abort, redirect, render_template, request, url_for

from windmill.db import BIGINT_MAX
from windmill.db.connect import DatabaseUnavailable
from windmill.errors import WindmillError, first_line
from windmill.web.data import STATUSES, Dashboard, GalleryFilter, MayNotRetry
from windmill.web.pictures import PICTURE_PX, THUMBNAIL_PX, placeholder_thumbnail

# What the overview says after an action went wrong, by the code its redirect carries: the sentence is the
# dashboard's own, so a link cannot put words of its choosing on the page as if the dashboard said them. What it
# says after a retry names a count and a queue, which come from the link too: they are shown only with the
# signature the retry's redirect put beside them (notice_signature), which no one without this process's key makes.
ACTION_PROBLEMS = {
    "may_not_retry": MayNotRetry.MESSAGE,
    "no_dead_jobs": "that queue has no dead job to retry (any there were have been retried)",
}

CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
REFRESH_S = 5


def loopback_hosts(host: str, port: int) -> set[str] | None:
    """The Host headers a server bound to a loopback address answers (None: any, for a server bound elsewhere,
    whose public name it cannot know)."""
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        return None
    return {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", host)}


def create_app(dashboard: Dashboard, *, allow_actions: bool = False, allowed_hosts: set[str] | None = None,
               csrf_token: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(ALLOW_ACTIONS=allow_actions, CSRF_TOKEN=csrf_token or secrets.token_urlsafe(32),
                      NOTICE_KEY=secrets.token_bytes(32), MAX_CONTENT_LENGTH=16 * 1024)
    app.jinja_env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str)
    app.jinja_env.globals.update(allow_actions=allow_actions, refresh_s=REFRESH_S)

    @app.before_request
    def check_host() -> None:
        if allowed_hosts is not None and request.host not in allowed_hosts:
            abort(421, "this dashboard answers only to its own address")

    @app.after_request
    def harden(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if response.mimetype == "text/html":  # pages hold live numbers and, with --allow-actions, the form's token
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(DatabaseUnavailable)
    @app.errorhandler(psycopg.OperationalError)
    def database_away(error: Exception) -> tuple[str, int]:
        return render_template("problem.html", title="Database unavailable",
                               message=f"database unavailable: {first_line(error)}"), 503

    @app.errorhandler(WindmillError)
    def user_error(error: WindmillError) -> tuple[str, int]:
        return render_template("problem.html", title="Not found", message=first_line(error)), 404

    @app.get("/")
    def overview() -> str:
        status = dashboard.status()
        dead = [row for row in status["queues"] if row.get("dead")]
        retried, queue = request.args.get("retried", ""), request.args.get("queue", "")
        signed = hmac.compare_digest(request.args.get("signature", ""),
                                     notice_signature(app.config["NOTICE_KEY"], retried, queue))
        return render_template("overview.html", status=status, dead=dead, csrf_token=app.config["CSRF_TOKEN"],
                               retried=retried if signed else None, retried_queue=queue,
                               problem=ACTION_PROBLEMS.get(request.args.get("problem", "")))

    @app.get("/gallery")
    def gallery() -> str:
        status = request.args.get("status") or None
        if status is not None and status not in STATUSES:
            abort(400, f"status is one of {', '.join(STATUSES)}")
        before = request.args.get("before", type=int)
        if before is not None and not 0 < before <= BIGINT_MAX:
            abort(400, "before is an image id")
        group, emoji = request.args.get("group") or None, request.args.get("emoji") or None
        if "\x00" in (group or "") + (emoji or ""):
            abort(400, "a group or emoji holds no NUL character")
        selected = GalleryFilter(group=group, emoji=emoji, status=status, before=before)
        images, next_before = dashboard.gallery(selected)
        return render_template("gallery.html", images=images, next_before=next_before, selected=selected,
                               groups=dashboard.groups(), statuses=STATUSES)

    @app.get("/images/<int:image_id>")
    def image(image_id: int) -> str:
        if image_id > BIGINT_MAX:
            abort(404)
        page = dashboard.image(image_id)
        return render_template("image.html", page=page, record=page.record, overlay=page.overlay)

    @app.get("/images/<int:image_id>/<any(picture, thumbnail):kind>.jpg")
    def picture(image_id: int, kind: str) -> Response:
        if image_id > BIGINT_MAX:
            abort(404)
        try:
            found = dashboard.picture(image_id, THUMBNAIL_PX if kind == "thumbnail" else PICTURE_PX)
        except WindmillError as problem:
            if kind == "thumbnail":  # in the gallery: a tile rather than a broken picture (the page says why)
                return Response(placeholder_thumbnail(), mimetype="image/jpeg", headers={"Cache-Control": "no-store"})
            return Response(first_line(problem), status=404, mimetype="text/plain")
        if found is None:
            abort(404)
        response = Response(found.jpeg, mimetype="image/jpeg")
        response.headers["Cache-Control"] = "private, max-age=300"
        return response

    @app.post("/actions/retry")
    def retry() -> Any:
        if not allow_actions:
            abort(403, "actions are off: start the dashboard with --allow-actions")
        if not _same_origin() or not hmac.compare_digest(request.form.get("csrf_token", ""),
                                                         app.config["CSRF_TOKEN"]):
            abort(403, "the request did not come from this dashboard's own form")
        queue = request.form.get("queue", "")
        if queue not in {row["queue"] for row in dashboard.status()["queues"] if row.get("dead")}:
            return redirect(url_for("overview", problem="no_dead_jobs"), code=303)
        try:
            retried = dashboard.retry_dead(queue)
        except MayNotRetry:
            return redirect(url_for("overview", problem="may_not_retry"), code=303)
        signature = notice_signature(app.config["NOTICE_KEY"], str(retried), queue)
        return redirect(url_for("overview", retried=retried, queue=queue, signature=signature), code=303)

    return app


def notice_signature(key: bytes, retried: str, queue: str) -> str:
    """The signature of the retry notice `retried` dead job(s) of `queue` again: what the overview's link must carry
    for the page to show that notice (HMAC-SHA256 under the process's key)."""
    return hmac.new(key, f"{retried}\x00{queue}".encode(), "sha256").hexdigest()


def _same_origin() -> bool:
    """The browser says where the request came from: a form of another site is refused (Origin, or Fetch
    Metadata when there is no Origin header)."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin == request.host_url.rstrip("/")
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
