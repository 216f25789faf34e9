"""The console's JSON API (``/api``): what the pages show and do, for scripts and
monitoring. Every route needs a signed-in session (``POST /api/session``) or the trusted
proxy header; every POST also needs the session's CSRF token in ``X-CSRF-Token``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from dicom_node.web.app import DestinationName, RowId, StudyUid, remote_of, require_admin, require_clinician, require_csrf, user_of
from dicom_node.web.auth import new_csrf_token
from dicom_node.web.console import ActionRefused, Console, SignInRefused

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["api"])
#: An action on the node: the session's CSRF token and the admin role.
Action = Depends(require_admin)
#: Recording an outcome: the CSRF token and the clinician (or admin) role.
OutcomeAction = Depends(require_clinician)


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _refused(exc: ActionRefused) -> HTTPException:
    text = str(exc)
    return HTTPException(404 if text.startswith(("no job", "no study", "no destination", "no model bundle")) else 409,
                         text)


class SignIn(BaseModel):
    user: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class OutcomeBody(BaseModel):
    status: str = Field(description="positive | negative | not_assessable", max_length=16)
    source: str = Field(description="resection | biopsy | primary_only: the metastasis itself, or the primary tumour only",
                        max_length=16)
    date: str | None = Field(default=None, description="the pathology date, YYYY-MM-DD", max_length=10)
    subtype: str | None = Field(default=None, description="exon19_deletion | L858R | other (positive only)", max_length=24)
    reference: str | None = Field(default=None, description="free text: the pathology report's reference", max_length=256)


class BundlePath(BaseModel):
    path: str = Field(description="a bundle folder on the node's file system, or a registered bundle id")
    force: bool = Field(default=False, description="activate despite the bundle's guards (audited; every SR says so)")


@router.post("/session", summary="Sign in; returns the CSRF token the POSTs of this session carry")
async def sign_in(body: SignIn, request: Request) -> Response:
    """Throttled per user and per address: 401 wrong user or password, 429 locked out."""
    console, users = _console(request), request.app.state.users
    try:
        token = await asyncio.to_thread(console.sign_in, body.user, body.password, remote_of(request), users)
    except SignInRefused as exc:
        if exc.status == 401:
            await asyncio.sleep(1.0)  # slows one guesser; the lock-out stops many
        return JSONResponse({"detail": str(exc)}, status_code=exc.status,
                            headers={"Retry-After": str(exc.retry_after)} if exc.retry_after else None)
    request.session.clear()  # a new session on sign-in (no fixation)
    request.session.update(user=body.user, sid=token, csrf=new_csrf_token())
    return JSONResponse({"user": body.user, "csrf_token": request.session["csrf"]})


@router.get("/session", summary="Who is signed in, and the session's CSRF token")
def session_info(request: Request) -> dict[str, Any]:
    user = request.state.user
    if user is None:
        raise HTTPException(401, "not signed in")
    return {"user": user, "csrf_token": request.session.get("csrf")}


@router.delete("/session", summary="Sign out", dependencies=[Depends(require_csrf)])
def sign_out(request: Request) -> dict[str, Any]:
    """Ends the session on the server too: its cookie opens nothing after this."""
    _console(request).sign_out(request.session.get("sid"), request.state.user, remote_of(request))
    request.session.clear()
    return {"signed_out": True}


@router.get("/jobs", summary="Jobs, newest first, filtered by state, study and creation time; paged")
def jobs(request: Request, state: str | None = None, study_uid: str | None = None, since: datetime | None = None,
         until: datetime | None = None, limit: int = Query(50, ge=1, le=500),
         offset: int = Query(0, ge=0, le=2**31 - 1)) -> dict[str, Any]:
    try:
        items = _console(request).jobs(state, study_uid, _naive_utc(since), _naive_utc(until), limit, offset)
    except ActionRefused as exc:
        raise HTTPException(422, str(exc)) from None
    return {"jobs": items, "limit": limit, "offset": offset}


@router.get("/jobs/{job_id}", summary="One job as `egfr-node queue show` prints it, with its deliveries")
def job(job_id: RowId, request: Request) -> dict[str, Any]:
    return _act(lambda c: c.job(job_id), request)


@router.get("/jobs/{job_id}/card.png", summary="The job's result card (the crops the model saw, scores)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def card(job_id: RowId, request: Request) -> Response:
    try:
        png = _console(request).result_card_png(job_id)
    except ActionRefused as exc:
        raise _refused(exc) from None
    if png is None:
        raise HTTPException(404, f"job {job_id} built no result card")
    return Response(png, media_type="image/png")


@router.post("/jobs/{job_id}/replay", summary="Queue the job's study again; re-sends its stored results",
             dependencies=[Action])
def replay_job(job_id: RowId, request: Request) -> dict[str, Any]:
    return _act(lambda c: c.replay(user_of(request), str(job_id), rerun=False, remote=remote_of(request)), request)


@router.post("/jobs/{job_id}/rerun", summary="Queue the job's study again and predict again",
             dependencies=[Action])
def rerun_job(job_id: RowId, request: Request) -> dict[str, Any]:
    return _act(lambda c: c.replay(user_of(request), str(job_id), rerun=True, remote=remote_of(request)), request)


@router.post("/jobs/{job_id}/cancel", summary="Cancel a waiting or queued job", dependencies=[Action])
def cancel_job(job_id: RowId, request: Request) -> dict[str, Any]:
    return _act(lambda c: c.cancel(user_of(request), job_id, remote=remote_of(request)), request)


@router.get("/studies", summary="Studies received, latest arrival first: counts, last arrival, why one waits")
def studies(request: Request, limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=2**31 - 1)) -> dict[str, Any]:
    total, items = _console(request).studies(limit, offset)
    return {"total": total, "studies": items, "limit": limit, "offset": offset,
            "kept_unanswered": _console(request).kept_unanswered()}


@router.post("/studies/{study_uid}/replay", summary="Queue a study (by Study Instance UID) again",
             dependencies=[Action])
def replay_study(study_uid: StudyUid, request: Request, rerun: bool = False) -> dict[str, Any]:
    return _act(lambda c: c.replay(user_of(request), study_uid, rerun=rerun, remote=remote_of(request)), request)


@router.get("/models", summary="Registered model bundles")
def models(request: Request) -> dict[str, Any]:
    return {"bundles": _console(request).bundles()}


@router.get("/models/{model_id}", summary="A bundle: its record, manifest and cross-validation report")
def model(model_id: RowId, request: Request) -> dict[str, Any]:
    return _act(lambda c: c.bundle(model_id), request)


@router.post("/models/{model_id}/activate", summary="Check a registered bundle again and make it the active one",
             dependencies=[Action])
def activate_model(model_id: RowId, request: Request, force: bool = False) -> dict[str, Any]:
    """``force=true`` activates a bundle its guards refuse (audited; every SR says so)."""
    return _act(lambda c: c.activate(user_of(request), str(model_id), remote=remote_of(request), force=force), request)


@router.post("/models", summary="Check, register and activate a bundle folder", dependencies=[Action])
def activate_folder(body: BundlePath, request: Request) -> dict[str, Any]:
    return _act(lambda c: c.activate(user_of(request), body.path, remote=remote_of(request), force=body.force), request)


@router.get("/studies/{study_uid}/outcome", summary="A study's pathology outcome and every change of it")
def study_outcome(study_uid: StudyUid, request: Request) -> dict[str, Any]:
    return _console(request).outcome(study_uid)


@router.put("/studies/{study_uid}/outcome", summary="Record a study's pathology outcome (clinician or admin)",
            dependencies=[OutcomeAction])
def put_study_outcome(study_uid: StudyUid, body: OutcomeBody, request: Request) -> dict[str, Any]:
    try:
        return _console(request).record_outcome(user_of(request), study_uid, body.model_dump(), via="api",
                                                remote=remote_of(request))
    except ActionRefused as exc:
        raise HTTPException(404 if "not in this node's archive" in str(exc) else 422, str(exc)) from None


@router.get("/performance", summary="A bundle's running performance on the site's confirmed cases (default: the active "
                                    "bundle, compared with the shadow)")
def running_performance(request: Request, bundle: int | None = Query(None, ge=1, le=2**31 - 1),
                        compare: int | None = Query(None, ge=1, le=2**31 - 1), include_primary: bool = False) -> dict[str, Any]:
    return _act(lambda c: c.performance(bundle, include_primary, compare), request)


@router.post("/models/{model_id}/shadow", summary="Make a registered bundle the shadow (runs after the active one, "
                                                  "never sent)", dependencies=[Action])
def shadow_model(model_id: RowId, request: Request) -> dict[str, Any]:
    return _act(lambda c: c.shadow(user_of(request), str(model_id), remote=remote_of(request)), request)


@router.delete("/models/shadow", summary="No shadow bundle", dependencies=[Action])
def clear_shadow(request: Request) -> dict[str, Any]:
    return _act(lambda c: c.shadow(user_of(request), None, remote=remote_of(request)), request)


@router.post("/models/promote", summary="Make the shadow bundle the active one (its guards apply)", dependencies=[Action])
def promote_shadow(request: Request, force: bool = False) -> dict[str, Any]:
    return _act(lambda c: c.promote(user_of(request), force=force, remote=remote_of(request)), request)


@router.get("/destinations", summary="Destinations: deliveries sent, open and failed; last success and failure")
def destinations(request: Request) -> dict[str, Any]:
    return {"destinations": _console(request).destinations()}


@router.post("/destinations/{name}/echo", summary="C-ECHO a configured destination", dependencies=[Action])
def echo(name: DestinationName, request: Request) -> dict[str, Any]:
    return _act(lambda c: c.echo(user_of(request), name, remote=remote_of(request)), request)


class FetchRequest(BaseModel):
    source: str | None = Field(None, max_length=64)
    study_uid: str = Field(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")


@router.post("/fetch", summary="Retrieve a study from a [[sources]] PACS and predict it (in the background; audited)",
             dependencies=[Action], status_code=202)
def fetch(body: FetchRequest, request: Request) -> dict[str, Any]:
    return _act(lambda c: c.fetch(user_of(request), body.source, body.study_uid, remote=remote_of(request)), request)


@router.get("/health", summary="The health strip: listening, database, free space, queue depth, last error")
def health(request: Request) -> dict[str, Any]:
    return _console(request).health().to_json()


@router.get("/metrics", summary="The database-derived /metrics figures (Prometheus text format)",
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(_console(request).metrics_text(), media_type=CONTENT_TYPE_LATEST)


@router.get("/audit", summary="Who did what from the console, newest first")
def audit(request: Request, limit: int = Query(200, ge=1, le=1000), offset: int = Query(0, ge=0, le=2**31 - 1)) -> dict[str, Any]:
    return {"audit": _console(request).audit(limit, offset), "limit": limit, "offset": offset}


def _act(action: Callable[[Console], dict[str, Any]], request: Request) -> dict[str, Any]:
    """``action(console)``; a refusal as 404 (unknown thing) or 409 (wrong state)."""
    try:
        return action(_console(request))
    except ActionRefused as exc:
        raise _refused(exc) from None
