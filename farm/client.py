"""A typed Python client for farm's native API (``/api/v1``).

Requests and answers are the API's own pydantic models (``farm/spec.py``,
``farm/services/campaigns.py``, ``farm/api/schemas.py``): a request is
checked here exactly as the server checks its shape, so a mistake is named
before it travels, and an answer is parsed into the model the server's
contract (``/api/v1/openapi.json``) is generated from, so the client cannot
drift from what the server says.

Errors come as one hierarchy mapping the API's error JSON
(``{"error": {"code", "message", "details"}}``): :class:`FarmError` with
``status``, ``code``, ``message`` and ``details``, subclassed per status.

    with Farm("http://127.0.0.1:8000", token) as farm:
        job = farm.submit(prompt="a lighthouse at dawn", steps=20)
        done = farm.wait(job.id, timeout=600)
        png = farm.download(done.outputs[0])
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, TypeVar

import requests
from pydantic import BaseModel, ValidationError

from farm.api import schemas
# The models answers and events are parsed into, importable from here too.
from farm.api.schemas import (CampaignProgressEvent, CampaignStatusEvent, CampaignSubmitted, CampaignView, EndEvent,
                              JobProgressEvent, JobStatusEvent, JobView, OutputEvent, OutputLink, OutputRecord,
                              PreviewEvent, UploadView)
from farm.spec import GenerationRequest, RequestError, problems_from_validation

logger = logging.getLogger(__name__)

__all__ = [
    "Farm", "FarmError", "InvalidRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict", "QuotaExceeded",
    "Unavailable", "Unreachable", "JobFailed", "WaitTimeout", "GenerationRequest", "preview_image",
    "CampaignProgressEvent", "CampaignStatusEvent", "CampaignSubmitted", "CampaignView", "EndEvent",
    "JobProgressEvent", "JobStatusEvent", "JobView", "OutputEvent", "OutputLink", "OutputRecord", "PreviewEvent",
    "SubmittedJob", "UploadView",
]

FINAL_STATUSES = ("succeeded", "failed", "canceled")
# The longest long-poll the API grants (schemas.WaitQuery.wait).
MAX_WAIT_S = 30.0
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
Model = TypeVar("Model", bound=BaseModel)


class SubmittedJob(schemas.JobView):
    """What :meth:`Farm.submit` returns: the job's view, plus its webhook as
    submitted (``webhook_created``: the URL and the whsec_ secret, the one given
    or the one the farm generated), which the farm shows only in the answer to
    the submission."""

    webhook_created: schemas.WebhookCreated | None = None


# --------------------------------------------------------------------------- errors

class FarmError(Exception):
    """An answer of the farm that is not a success, or a request that cannot be sent.

    ``status`` is the HTTP status (None when no answer came); ``code`` and
    ``details`` are the error JSON's: for a request to fix, ``details`` lists
    ``{"field", "message"}`` (:attr:`fields` as a dict).
    """

    def __init__(self, message: str, status: int | None = None, code: str = "error", details: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}" if self.status else self.message

    @property
    def fields(self) -> dict[str, str]:
        """Field -> what to fix, from ``details`` (empty when the error names no field)."""
        if not isinstance(self.details, list):
            return {}
        return {item["field"]: item.get("message", "") for item in self.details
                if isinstance(item, dict) and "field" in item}


class InvalidRequest(FarmError):
    """400, 413, 415, 422: the request needs fixing (``fields`` says where)."""


class Unauthorized(FarmError):
    """401: no token, or one the farm does not know (revoked, mistyped)."""


class Forbidden(FarmError):
    """403: the token may not do this (read-only, not an admin)."""


class NotFound(FarmError):
    """404: no such job, output or campaign, or one of another user's."""


class Conflict(FarmError):
    """409: not in this state (cancelling a finished job, resuming an active campaign)."""


class QuotaExceeded(FarmError):
    """429: a quota refuses the work; ``details["limit"]`` names it, ``retry_after`` says when to try again."""


class Unavailable(FarmError):
    """503: the database or the store is down for now; ``retry_after`` says when to try again."""


class Unreachable(FarmError):
    """No answer at all: nothing listens at the base URL, or the connection broke."""


class JobFailed(FarmError):
    """:meth:`Farm.wait`: the job ended failed or canceled; ``job`` is its final view."""

    def __init__(self, job: schemas.JobView) -> None:
        super().__init__(f"job {job.id} {job.status}: {job.error}", code=job.status)
        self.job = job


class WaitTimeout(FarmError, TimeoutError):
    """:meth:`Farm.wait`: the job was not final in time; ``job`` is its latest view."""

    def __init__(self, job: schemas.JobView, timeout: float) -> None:
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s", code="timeout")
        self.job = job


_ERRORS: dict[int, type[FarmError]] = {400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                       409: Conflict, 413: InvalidRequest, 415: InvalidRequest, 422: InvalidRequest,
                                       429: QuotaExceeded, 503: Unavailable}


def error_from_response(response: requests.Response) -> FarmError:
    """The exception for an error answer: its class by status, its fields from the error JSON."""
    status = response.status_code
    cls = _ERRORS.get(status, FarmError)
    retry_after = retry_after_s(response.headers.get("Retry-After"))
    try:
        error = response.json()["error"]
        message, code, details = str(error["message"]), str(error.get("code", "error")), error.get("details")
    except (ValueError, KeyError, TypeError):
        # Not farm's error JSON: a proxy's page, a load balancer's 502.
        message, code, details = f"unexpected answer from the farm (HTTP {status})", "error", None
    return cls(message, status=status, code=code, details=details, retry_after=retry_after)


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _invalid(problems) -> InvalidRequest:
    """The error the server would answer for these problems, raised before sending."""
    message = "the request needs fixing: " + "; ".join(f"{p.field}: {p.message}" for p in problems)
    return InvalidRequest(message, status=422, code="validation_error", details=[p.as_dict() for p in problems])


# --------------------------------------------------------------------------- events

# The data model of each event name; progress and status differ between job
# and campaign streams.
_JOB_EVENTS = {"status": schemas.JobStatusEvent, "progress": schemas.JobProgressEvent,
               "preview": schemas.PreviewEvent, "output": schemas.OutputEvent, "end": schemas.EndEvent}
_CAMPAIGN_EVENTS = {**_JOB_EVENTS, "status": schemas.CampaignStatusEvent, "job": schemas.CampaignJobEvent}

Event = (schemas.JobStatusEvent | schemas.CampaignStatusEvent | schemas.JobProgressEvent
         | schemas.CampaignProgressEvent | schemas.CampaignJobEvent | schemas.PreviewEvent | schemas.OutputEvent
         | schemas.EndEvent)


def parse_sse(lines) -> Iterator[tuple[str, str | None, str]]:
    """(event name, id, data) per event of a text/event-stream, from its lines
    (the WHATWG HTML "server-sent events" parsing rules, minus ``retry``)."""
    name, event_id, data = "", None, []
    for line in lines:
        if line == "":
            if data:
                yield name or "message", event_id, "\n".join(data)
            name, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's keep-alive
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            event_id = value


def typed_event(kind: str, name: str, data: dict[str, Any]) -> Event | None:
    """The event's data as its schemas model; None for an event name this client does not know."""
    if name == "progress" and kind == "campaign" and "counts" in data:
        return schemas.CampaignProgressEvent.model_validate(data)
    model = (_CAMPAIGN_EVENTS if kind == "campaign" else _JOB_EVENTS).get(name)
    return model.model_validate(data) if model else None


def preview_image(event: schemas.PreviewEvent) -> bytes:
    """A preview event's image (JPEG) bytes."""
    return base64.b64decode(event.data)


# --------------------------------------------------------------------------- the client

class Farm:
    """A session with one farm as one user (the token's).

    ``timeout`` bounds each request (a long poll adds its wait);
    ``retry_budget_s`` is how long idempotent GETs keep retrying 503
    answers, sleeping as Retry-After says; other methods never retry, since a
    POST that reached the farm may have queued work.
    """

    def __init__(self, base_url: str, token: str, timeout: float = 30.0, retry_budget_s: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry_budget_s = retry_budget_s
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_env(cls, **kwargs) -> Farm:
        """A client for ``FARM_URL`` and ``FARM_TOKEN`` (or the CLI's ``FARM_API_URL``, ``FARM_API_TOKEN``)."""
        url = os.environ.get("FARM_URL") or os.environ.get("FARM_API_URL")
        token = os.environ.get("FARM_TOKEN") or os.environ.get("FARM_API_TOKEN")
        missing = [name for name, value in (("FARM_URL", url), ("FARM_TOKEN", token)) if not value]
        if missing:
            raise FarmError(f"set {' and '.join(missing)} (the farm's base URL and an API token)", code="configuration")
        return cls(url, token, **kwargs)

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def __repr__(self) -> str:
        return f"Farm({self.base_url!r})"

    # ------------------------------------------------------------------ transport

    def request(self, method: str, path: str, *, timeout: float | tuple | None = None, **kwargs) -> requests.Response:
        """One API call (``path`` under the base URL); an error answer raises its FarmError.

        GETs answered 503 are retried within ``retry_budget_s``, honouring Retry-After.
        """
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        deadline = time.monotonic() + self.retry_budget_s
        while True:
            try:
                response = self.session.request(method, url, timeout=timeout or self.timeout, **kwargs)
            except requests.ConnectionError as exc:
                raise Unreachable(f"cannot reach the farm at {self.base_url} ({type(exc).__name__})",
                                  code="unreachable") from None
            except requests.Timeout:
                raise Unreachable(f"the farm at {self.base_url} did not answer {method} {path} in time",
                                  code="timeout") from None
            if response.status_code < 400:
                return response
            error = error_from_response(response)
            pause = error.retry_after if error.retry_after is not None else 1.0
            if (response.status_code != 503 or method.upper() != "GET"
                    or time.monotonic() + pause > deadline):
                response.close()
                raise error
            logger.info("%s %s: %s; trying again in %.1f s", method, path, error.message, pause)
            response.close()
            time.sleep(pause)

    def _json(self, response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise FarmError(f"unexpected answer from the farm (HTTP {response.status_code})",
                            status=response.status_code) from None

    def _call(self, model: type[Model], method: str, path: str, **kwargs) -> Model:
        response = self.request(method, path, **kwargs)
        try:
            return model.model_validate(self._json(response))
        except ValidationError as exc:
            raise FarmError(f"the farm's answer to {method} {path} is not a {model.__name__}: {exc.errors()[0]['msg']}",
                            status=response.status_code, code="bad_answer") from None

    # ------------------------------------------------------------------ jobs

    def submit(self, request: GenerationRequest | dict[str, Any] | None = None, /, **fields) -> SubmittedJob:
        """Queue one generation job and return its view (with the parameters resolved, e.g. the seed drawn)
        and, when it asked for a webhook, the webhook's signing secret (``webhook_created``).

        ``request`` is a GenerationRequest or a dict of its fields; keyword
        fields add to (or replace) them. The shape is checked here as the farm
        checks it: a field to fix raises InvalidRequest before anything is sent.
        """
        if isinstance(request, GenerationRequest):
            payload = {**request.model_dump(mode="json", exclude_unset=True), **fields}
        else:
            payload = {**(request or {}), **fields}
        try:
            body = GenerationRequest.model_validate(payload)
        except ValidationError as exc:
            raise _invalid(problems_from_validation(exc)) from None
        accepted = self._call(schemas.JobAccepted, "POST", "/api/v1/jobs",
                              json=body.model_dump(mode="json", exclude_unset=True))
        view = self._call(SubmittedJob, "GET", accepted.polling_url)
        view.webhook_created = accepted.webhook  # its secret is in no later answer
        return view

    def job(self, job_id: str, wait: float = 0) -> schemas.JobView:
        """A job's status, progress and outputs; ``wait`` (up to 30 s) long-polls until it is final."""
        wait = min(max(wait, 0.0), MAX_WAIT_S)
        return self._call(schemas.JobView, "GET", f"/api/v1/jobs/{job_id}", params={"wait": wait} if wait else None,
                          timeout=self.timeout + wait)

    def wait(self, job_id: str, timeout: float | None = None, *, poll_s: float = MAX_WAIT_S,
             on_update=None) -> schemas.JobView:
        """Long-poll until the job is final; its view when it succeeded.

        Raises JobFailed when it failed or was canceled and WaitTimeout when
        ``timeout`` seconds pass first (None: wait as long as it takes).
        Each long poll lasts up to ``poll_s`` seconds (at most 30; the poll
        answers as soon as the job is final); ``on_update(view)`` is called
        with each view that is not final yet.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll_s if deadline is None else deadline - time.monotonic()
            view = self.job(job_id, wait=min(poll_s, max(left, 0.0)))
            if view.status == "succeeded":
                return view
            if view.status in FINAL_STATUSES:
                raise JobFailed(view)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(view, timeout)
            if on_update is not None:
                on_update(view)

    def cancel(self, job_id: str) -> schemas.JobView:
        """Cancel a queued, assigned or running job (Conflict when it is already final)."""
        return self._call(schemas.JobView, "POST", f"/api/v1/jobs/{job_id}/cancel")

    def jobs(self, status: str | list[str] | None = None, campaign: str | None = None,
             page_size: int = 50) -> Iterator[schemas.JobView]:
        """Your jobs, newest first, following the pages' cursors; ``status`` one or several."""
        yield from self._pages("/api/v1/jobs", {"status": _statuses(status), "campaign": campaign}, page_size)

    def _pages(self, path: str, params: dict[str, Any], page_size: int) -> Iterator[schemas.JobView]:
        params = {key: value for key, value in params.items() if value is not None} | {"limit": page_size}
        while True:
            page = self._call(schemas.JobPage, "GET", path, params=params)
            yield from page.jobs
            if not page.next_cursor:
                return
            params["cursor"] = page.next_cursor

    def events(self, job_id: str, *, resume: bool = True) -> Iterator[Event]:
        """A job's Server-Sent Events as schemas models, up to and including its EndEvent.

        Status, progress (step, total, eta_s), live previews (:func:`preview_image`),
        outputs. When the farm ends a long stream (reason "timeout") it is
        reopened from the last event id, so the iterator follows the job to
        its end and that EndEvent is not yielded; ``resume=False`` yields it
        and stops there instead.
        """
        yield from self._events("job", f"/api/v1/jobs/{job_id}/events", resume)

    def _events(self, kind: str, path: str, resume: bool) -> Iterator[Event]:
        last_id = None
        while True:
            headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_id} if last_id else {})
            # The read timeout outlasts the server's keep-alive comments (15 s by default).
            response = self.request("GET", path, headers=headers, stream=True, timeout=(self.timeout, 120))
            ended, heard = None, False
            try:
                # chunk_size=None: each chunk as it arrives (a fixed size would wait for that many bytes).
                lines = (line.decode("utf-8") for line in response.iter_lines(chunk_size=None))
                for name, event_id, data in parse_sse(lines):
                    last_id, heard = event_id or last_id, True
                    try:
                        event = typed_event(kind, name, json.loads(data))
                    except (ValueError, ValidationError) as exc:
                        raise FarmError(f"the farm sent a {name!r} event this client cannot read: {exc}",
                                        code="bad_answer") from None
                    if isinstance(event, schemas.EndEvent):
                        ended = event
                        if event.reason != "timeout" or not resume:
                            yield event
                        break
                    if event is not None:
                        yield event
            except requests.RequestException as exc:
                raise Unreachable(f"the event stream of {path} broke ({type(exc).__name__})", code="unreachable") from None
            finally:
                response.close()
            if ended is None and not (resume and heard):
                # Closed without its end event (a proxy's or the farm's restart) and nothing to resume from.
                raise Unreachable(f"the event stream of {path} closed before its end", code="unreachable")
            if ended is not None and (ended.reason != "timeout" or not resume):
                return

    # ------------------------------------------------------------------ outputs and uploads

    def output(self, output_id: str) -> schemas.OutputRecord:
        """An output's lineage record."""
        return self._call(schemas.OutputRecord, "GET", f"/api/v1/outputs/{output_id}")

    def image(self, output: str | schemas.OutputLink | schemas.OutputEvent) -> tuple[bytes, str]:
        """An output's image bytes and content type.

        Where the store presigns URLs the farm answers a redirect; the image is
        fetched from there without the farm's token (a presigned URL carries
        its own signature, and the token is not the store's business).
        """
        output_id = output if isinstance(output, str) else output.id
        path = f"/api/v1/outputs/{output_id}/image"
        response = self.request("GET", path, allow_redirects=False, timeout=self.timeout * 2)
        if response.is_redirect:
            location = response.headers["Location"]
            try:
                response = requests.get(requests.compat.urljoin(response.url, location), timeout=self.timeout * 2)
            except requests.RequestException as exc:
                raise Unreachable(f"cannot fetch the image of output {output_id} from the store "
                                  f"({type(exc).__name__})", code="unreachable") from None
            if response.status_code >= 400:
                raise FarmError(f"the store answered HTTP {response.status_code} for the image of output {output_id}",
                                status=response.status_code, code="store_error")
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return response.content, content_type

    def download(self, output: str | schemas.OutputLink | schemas.OutputEvent) -> bytes:
        """An output's image bytes (an output id, or an output of a job view or an event)."""
        return self.image(output)[0]

    def download_to(self, output: str | schemas.OutputLink | schemas.OutputEvent, path: str | Path) -> Path:
        """Save an output's image; returns the file written.

        ``path`` may be a directory (the file is named by the output id) or a
        file; a name without a suffix gets the image's (.png, .jpg, .webp).
        """
        data, content_type = self.image(output)
        path = Path(path)
        extension = _EXTENSIONS.get(content_type, "png")
        if path.is_dir():
            path = path / f"{output if isinstance(output, str) else output.id}.{extension}"
        elif not path.suffix:
            path = path.with_name(f"{path.name}.{extension}")
        path.write_bytes(data)
        return path

    def upload(self, image: str | Path | bytes) -> schemas.UploadView:
        """Upload a source image or mask (PNG, JPEG, WebP: a path or the bytes) for image-to-image requests."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return self._call(schemas.UploadView, "POST", "/api/v1/uploads", data=data,
                          headers={"Content-Type": "application/octet-stream"}, timeout=self.timeout * 4)

    # ------------------------------------------------------------------ campaigns

    def submit_campaign(self, spec, *, rows: str | Path | None = None, dry_run: bool | None = None
                        ) -> schemas.CampaignSubmitted:
        """Queue a campaign (or price it: ``dry_run=True`` answers the job count and cost, no id).

        ``spec`` is a CampaignRequest, a dict, or the path of a JSON or YAML
        file of one; ``rows`` the path of a CSV or JSONL file of per-job
        overrides, sent as the farm's multipart upload (as `farm campaign
        submit --rows` does). The spec's shape, matrix and rows are checked
        here as the farm checks them.
        """
        from farm.services.campaigns import CampaignRequest, parse_campaign

        if isinstance(spec, CampaignRequest):
            payload = spec.model_dump(mode="json", exclude_unset=True)
        elif isinstance(spec, dict):
            payload = dict(spec)
        else:
            payload = load_campaign_file(Path(spec))
        if dry_run is not None:
            payload["dry_run"] = dry_run
        try:
            checked = parse_campaign(payload)
        except RequestError as exc:
            raise _invalid(exc.problems) from None
        body = checked.model_dump(mode="json", exclude_unset=True)
        # A campaign of thousands of jobs takes a while to insert.
        timeout = max(self.timeout, 300)
        if rows is None:
            return self._call(schemas.CampaignSubmitted, "POST", "/api/v1/campaigns", json=body, timeout=timeout)
        rows = Path(rows)
        with open(rows, "rb") as handle:
            return self._call(schemas.CampaignSubmitted, "POST", "/api/v1/campaigns", timeout=timeout,
                              data={"request": json.dumps(body)}, files={"rows": (rows.name, handle)})

    def campaign(self, campaign_id: str) -> schemas.CampaignView:
        """Counts, percent, images per minute, ETA."""
        return self._call(schemas.CampaignView, "GET", f"/api/v1/campaigns/{campaign_id}")

    def campaign_jobs(self, campaign_id: str, status: str | list[str] | None = None,
                      page_size: int = 50) -> Iterator[schemas.JobView]:
        """A campaign's jobs, newest first, following the pages' cursors."""
        yield from self._pages(f"/api/v1/campaigns/{campaign_id}/jobs", {"status": _statuses(status)}, page_size)

    def pause_campaign(self, campaign_id: str) -> schemas.CampaignView:
        return self._call(schemas.CampaignView, "POST", f"/api/v1/campaigns/{campaign_id}/pause")

    def resume_campaign(self, campaign_id: str) -> schemas.CampaignView:
        return self._call(schemas.CampaignView, "POST", f"/api/v1/campaigns/{campaign_id}/resume")

    def cancel_campaign(self, campaign_id: str) -> schemas.CampaignCanceled:
        return self._call(schemas.CampaignCanceled, "POST", f"/api/v1/campaigns/{campaign_id}/cancel")

    def retry_failed(self, campaign_id: str) -> schemas.CampaignRetried:
        return self._call(schemas.CampaignRetried, "POST", f"/api/v1/campaigns/{campaign_id}/retry-failed")

    def campaign_events(self, campaign_id: str, *, resume: bool = True) -> Iterator[Event]:
        """A campaign's Server-Sent Events (status, progress with counts, each job's progress, outputs, end)."""
        yield from self._events("campaign", f"/api/v1/campaigns/{campaign_id}/events", resume)

    def manifest(self, campaign_id: str) -> list[dict[str, Any]]:
        """Every output of the campaign with its URL and lineage, in matrix order."""
        response = self.request("GET", f"/api/v1/campaigns/{campaign_id}/manifest", params={"format": "jsonl"},
                                timeout=max(self.timeout, 300))
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def manifest_csv(self, campaign_id: str) -> str:
        """The manifest as CSV text (formula-leading cells neutralised by the farm)."""
        response = self.request("GET", f"/api/v1/campaigns/{campaign_id}/manifest", params={"format": "csv"},
                                timeout=max(self.timeout, 300))
        return response.text

    # ------------------------------------------------------------------ you and the farm

    def me(self) -> schemas.MeView:
        """Who the token belongs to, their quotas, usage and what remains."""
        return self._call(schemas.MeView, "GET", "/api/v1/me")

    def models(self) -> list[schemas.ModelView]:
        """The registered models."""
        return self._call(schemas.ModelList, "GET", "/api/v1/models").models


def _statuses(status: str | list[str] | tuple[str, ...] | None) -> str | None:
    return ",".join(status) if isinstance(status, (list, tuple)) else status


def load_campaign_file(path: Path) -> dict[str, Any]:
    """A campaign request from a JSON or YAML (.yaml, .yml) file; InvalidRequest naming the file otherwise."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl", ".ndjson"):
        raise InvalidRequest(f"{path} holds rows, not a campaign; pass it as the rows of a JSON or YAML campaign "
                             "(rows=, or --rows on the command line)", code="bad_file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read {path}: {exc}", code="bad_file") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise InvalidRequest(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the campaign "
                                 "as JSON", code="bad_file") from None
        try:
            payload = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise InvalidRequest(f"{path} is not YAML: {getattr(exc, 'problem', None) or exc}{where}",
                                 code="bad_file") from None
    else:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path} is not JSON: {exc.msg} (line {exc.lineno})", code="bad_file") from None
    if not isinstance(payload, dict):
        raise InvalidRequest(f"{path} must hold one object with name, base and a matrix and/or rows",
                             code="bad_file")
    return payload
