"""`llmpipe rate`'s server: stdlib HTTP on 127.0.0.1, one session, ratings saved as they arrive.

    GET  /             the page (`llm.eval.rating_page`), its script and style
    GET  /api/items    {"total", "rated", "items": [{"index", "prompt", "A", "B"}, ...]}, unrated only
    POST /api/rate     {"index", "choice": "A" | "B" | "tie", "note"} -> {"total", "rated"}

The page never learns which model an answer came from: the session maps A and B back. Model text is
data, never markup (the page sets it as text; the policy below allows no inline script at all). A POST
must be JSON, which a form on another site cannot send without a preflight this server never grants, and
the Host header must be this server's own, which a rebound DNS name is not.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from llm import storage
from llm.config import PipelineConfig
from llm.errors import UserError
from llm.finetune.base import check_registered_ref, is_registered
from llm.eval.rating import MODELS, RATE_DIR, AlreadyRated, RatingSession, load_prompts, open_session
from llm.eval.rating_models import Decoding, resolve_model
from llm.eval.rating_page import PAGE_CSS, PAGE_HTML, PAGE_JS
from llm.eval.rating_summary import RatingRun, summary_markdown, write_summary
from llm.tracking import Tracker, resolve_tracking_uri

log = logging.getLogger(__name__)
#: Largest request body accepted (a rating with its note is well under 10 KiB).
MAX_BODY = 64 * 1024
_STATIC = {"/": ("text/html", PAGE_HTML), "/rating.js": ("text/javascript", PAGE_JS),
           "/rating.css": ("text/css", PAGE_CSS)}
_HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'none'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


class RatingServer:
    """Serves one session on `host:port` (port 0: a free one) in a background thread."""

    def __init__(self, session: RatingSession, run: RatingRun | None = None, host: str = "127.0.0.1", port: int = 0):
        self.session, self.run = session, run
        self._write = threading.Lock()
        try:
            self.http = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        self.http.daemon_threads = True
        self.host, self.port = self.http.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def hosts(self) -> set[str]:
        """The Host headers this server answers: its own address (a rebound DNS name is refused)."""
        return {f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"{self.host}:{self.port}"}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> "RatingServer":
        self._thread = threading.Thread(target=self.http.serve_forever, name="rating-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; the session's files are complete at every moment."""
        if self._thread is not None:
            self.http.shutdown()
            self._thread.join()
        self.http.server_close()

    def items(self) -> dict:
        rated = self.session.rated()
        return {"total": len(self.session.prompts), "rated": len(rated),
                "items": [self.session.item(i) for i in range(len(self.session.prompts)) if i not in rated]}

    def rate(self, body: dict) -> dict:
        with self._write:  # one rating at a time: the summary and the run's steps follow the file's order
            self.session.record(body.get("index"), body.get("choice"), body.get("note", ""))
            summary = write_summary(self.session)
            if self.run is not None:
                self.run.publish(summary)
        return {"total": summary["prompts"], "rated": summary["ratings"]}


def _handler(server: RatingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "llmpipe-rate"

        def do_GET(self) -> None:
            if not self._host_ok():
                return
            path = self.path.split("?", 1)[0]
            if path == "/api/items":
                self._send_json(HTTPStatus.OK, server.items())
            elif path in _STATIC:
                kind, text = _STATIC[path]
                self._send(HTTPStatus.OK, f"{kind}; charset=utf-8", text.encode())
            else:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}"})

        def do_POST(self) -> None:
            if not self._host_ok():
                return
            if self.path != "/api/rate":
                self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
                return
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                self._send_json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send the rating as application/json"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"a rating is 1 to {MAX_BODY} bytes"})
                return
            try:
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict):
                    raise UserError("send a JSON object")
                self._send_json(HTTPStatus.OK, server.rate(body))
            except AlreadyRated as exc:
                self._send_json(HTTPStatus.CONFLICT, {"error": str(exc), **server.items(), "items": []})
            except (UserError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

        def _host_ok(self) -> bool:
            if self.headers.get("Host") in server.hosts:
                return True
            self._send_json(HTTPStatus.FORBIDDEN, {"error": "this server answers only at its own loopback address"})
            return False

        def _send_json(self, status: HTTPStatus, data: dict) -> None:
            self._send(status, "application/json", json.dumps(data, ensure_ascii=False).encode())

        def _send(self, status: HTTPStatus, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in _HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def run_rating(model_a: str, model_b: str, cfg: PipelineConfig, prompts_file: str | None = None,
               work_dir: str | None = None, port: int = 8790, max_new_tokens: int | None = None, seed: int = 0,
               tokenizer: str | None = None, summary_only: bool = False, announce=print) -> dict | None:
    """`llmpipe rate`: open the session comparing `model_a` and `model_b` (prompts from `prompts_file`, else
    `cfg.eval.prompts`; decoding from `cfg.eval`), then serve it until Ctrl-C, or with `summary_only`
    write, log and return the summary of the ratings so far."""
    work_dir = work_dir or cfg.work_dir
    refs = [(ref, setting) for ref, setting in ((model_a, "MODEL_A"), (model_b, "MODEL_B")) if is_registered(ref)]
    for ref, setting in refs:
        check_registered_ref(ref, setting)
    # The registry is the tracking store; only a `models:/` reference needs it (and its default store made).
    registry = resolve_tracking_uri(cfg.tracking, work_dir) if refs else ""
    fetch_root = storage.join(storage.absolute(work_dir), RATE_DIR, "models")
    models = {m: resolve_model(ref, setting, registry, fetch_root)
              for m, ref, setting in zip(MODELS, (model_a, model_b), ("MODEL_A", "MODEL_B"))}
    prompts = load_prompts(prompts_file) if prompts_file else list(cfg.eval.prompts)
    decoding = Decoding(max_new_tokens or cfg.eval.max_new_tokens, cfg.eval.temperature, cfg.eval.top_k, seed)
    session = open_session(models, prompts, decoding, work_dir, tokenizer, generate=not summary_only)
    # Only now: the tracker makes the default MLflow store, which a mistyped model or prompt file should not.
    run = RatingRun(Tracker(cfg.tracking, work_dir), session)
    if summary_only:
        summary = write_summary(session)
        run.publish(summary)
        run.finish()
        announce(summary_markdown(summary))
        return summary
    serve_session(session, run, port, announce)
    return None


def serve_session(session: RatingSession, run: RatingRun | None, port: int, announce=print) -> None:
    """Serve the session on 127.0.0.1:`port` until Ctrl-C, then stop cleanly and finish the MLflow run."""
    server = RatingServer(session, run, port=port).start()
    if run is not None and session.ratings():
        run.publish(write_summary(session))  # a continued session: the run shows the ratings so far at once
    announce(f"rating {session.name}: {len(session.rated())} rated of {len(session.prompts)}; open {server.url} "
             f"(Ctrl-C stops; ratings in {session.ratings_path})")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if run is not None:
            run.finish()
    announce(f"stopped: {len(session.rated())} rated of {len(session.prompts)} in {session.ratings_path}")
