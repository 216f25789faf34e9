"""The console's pages, server-rendered from ``templates/`` (Jinja): sign-in, queue (refreshes
itself), job, studies, models, destinations, audit. Actions are forms that carry the
session's CSRF token and go through the same :class:`Console` calls as the API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from dicom_node.web.app import DestinationName, RowId, StudyUid, remote_of, require_admin, require_clinician, require_csrf, role_of, user_of
from dicom_node.web.auth import may
from dicom_node.web.auth import new_csrf_token
from dicom_node.web.console import ActionRefused, Console, SignInRefused
from dicom_node.web.plots import slice_scores_svg

__all__ = ["router", "error_page"]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
Action = Depends(require_admin)  # an action on the node: CSRF token and the admin role
Csrf = Depends(require_csrf)  # signing in and out: the CSRF token only
PAGE = 50
RESEARCH_USE = ("Research use only: a second opinion from a model cross-validated on one cohort, "
                "not a diagnosis; internal cross-validation is not external validation.")


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    console = _console(request)
    flash = request.session.pop("flash", None) if template != "queue_rows.html" else None
    return templates.TemplateResponse(request, template, {
        "user": request.state.user, "role": role_of(request), "csrf": request.session.get("csrf"), "flash": flash,
        "may_act": may(role_of(request), "act"), "may_enter_outcome": may(role_of(request), "outcome"),
        "health": console.health() if request.state.user else None, "research_use": RESEARCH_USE,
        "refresh_seconds": console.config.web.refresh_seconds, **context}, status_code=status_code)


def error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    return _render(request, "error.html", status_code=status_code, status=status_code, message=message)


def _back(request: Request, url: str, message: str, ok: bool = True) -> RedirectResponse:
    request.session["flash"] = {"ok": ok, "text": message}
    return RedirectResponse(url, status_code=303)


# --- signing in ------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    return target if target and target.startswith("/") and not target.startswith("//") else "/queue"


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> HTMLResponse:  # noqa: A002 - the query's name
    return _render(request, "login.html", next=_safe_next(next), failed=False)


@router.post("/login", dependencies=[Csrf])
async def login(request: Request, user: str = Form(max_length=64), password: str = Form(max_length=1024),
                next: str = Form("/queue")) -> Response:  # noqa: A002
    console, users = _console(request), request.app.state.users
    try:
        token = await asyncio.to_thread(console.sign_in, user, password, remote_of(request), users)
    except SignInRefused as exc:
        if exc.status == 401:
            await asyncio.sleep(1.0)  # slows one guesser; the lock-out stops many
        return _render(request, "login.html", status_code=exc.status, next=_safe_next(next), failed=str(exc))
    request.session.clear()  # a new session on sign-in (no fixation)
    request.session.update(user=user, sid=token, csrf=new_csrf_token())
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout", dependencies=[Csrf])
def logout(request: Request) -> Response:
    _console(request).sign_out(request.session.get("sid"), request.state.user, remote_of(request))
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


# --- queue and jobs ----------------------------------------------------------------------


@router.get("/")
def home() -> Response:
    return RedirectResponse("/queue", status_code=303)


def _queue_context(request: Request, state: str | None, study: str | None, page: int) -> dict[str, Any]:
    page = max(1, page)
    try:
        jobs = _console(request).jobs(state or None, study or None, limit=PAGE + 1, offset=(page - 1) * PAGE)
        problem = None
    except ActionRefused as exc:
        jobs, problem = [], str(exc)
    filters = {k: v for k, v in (("state", state), ("study", study)) if v}
    return {"jobs": jobs[:PAGE], "more": len(jobs) > PAGE, "page": page, "state": state or "", "study": study or "",
            "problem": problem, "query": urlencode(filters), "states": ["waiting", "queued", "running", "done",
                                                                       "failed", "cancelled"]}


@router.get("/queue")
def queue_page(request: Request, state: str | None = None, study: str | None = None, page: int = Query(1, ge=1, le=10**6)) -> HTMLResponse:
    return _render(request, "queue.html", **_queue_context(request, state, study, page))


@router.get("/queue/rows")
def queue_rows(request: Request, state: str | None = None, study: str | None = None, page: int = Query(1, ge=1, le=10**6)) -> HTMLResponse:
    """The queue table's body and the health strip, for the page's refresh."""
    return _render(request, "queue_rows.html", **_queue_context(request, state, study, page))


@router.get("/jobs/{job_id}")
def job_page(job_id: RowId, request: Request) -> HTMLResponse:
    console = _console(request)
    try:
        job = console.job(job_id)
    except ActionRefused as exc:
        return error_page(request, 404, str(exc))
    result = job.get("result") or {}
    plot = ""
    if result.get("scores"):
        plot = Markup(slice_scores_svg(result["scores"], result.get("threshold"),
                                       (result.get("selection") or {}).get("slices")))
    patient = console.patient_of(job_id) if (result.get("instances") or {}).get("sr") else {}
    outcome = console.outcome(job["study_uid"])
    return _render(request, "job.html", job=job, result=result, plot=plot, patient=patient,
                   has_card=bool((result.get("instances") or {}).get("card")), study_uid=job["study_uid"],
                   outcome=outcome["outcome"], outcome_history=outcome["history"], back=f"/jobs/{job_id}")


@router.post("/jobs/{job_id}/{action}", dependencies=[Action])
def job_action(job_id: RowId, action: str, request: Request) -> Response:
    console, user, remote = _console(request), user_of(request), remote_of(request)
    try:
        if action == "cancel":
            done = console.cancel(user, job_id, remote=remote)
        elif action in ("replay", "rerun"):
            done = console.replay(user, str(job_id), rerun=action == "rerun", remote=remote)
        else:
            return error_page(request, 404, f"no action {action!r} on a job")
    except ActionRefused as exc:
        return _back(request, f"/jobs/{job_id}", f"{action} refused: {exc}", ok=False)
    return _back(request, f"/jobs/{done['job']['id']}", done["outcome"])


# --- studies, models, destinations, audit -------------------------------------------------


@router.get("/studies")
def studies_page(request: Request, page: int = Query(1, ge=1, le=10**6)) -> HTMLResponse:
    page = max(1, page)
    total, studies = _console(request).studies(PAGE, (page - 1) * PAGE)
    return _render(request, "studies.html", studies=studies, total=total, page=page, more=page * PAGE < total,
                   kept=_console(request).kept_unanswered())


@router.get("/studies/{study_uid}")
def study_page(study_uid: StudyUid, request: Request) -> HTMLResponse:
    try:
        study = _console(request).study(study_uid)
    except ActionRefused as exc:
        return error_page(request, 404, str(exc))
    return _render(request, "study.html", study_uid=study_uid, jobs=study["jobs"], outcome=study["outcome"],
                   outcome_history=study["history"], back=f"/studies/{study_uid}")


@router.post("/studies/{study_uid}/outcome", dependencies=[Depends(require_clinician)])
def study_outcome(study_uid: StudyUid, request: Request, status: str = Form(max_length=16), source: str = Form(max_length=16),
                  date: str = Form("", max_length=10), subtype: str = Form("", max_length=24),
                  reference: str = Form("", max_length=256), back: str = Form("", max_length=256)) -> Response:
    target = back if back.startswith(("/jobs/", "/studies/")) else f"/studies/{study_uid}"
    try:
        done = _console(request).record_outcome(user_of(request), study_uid, {
            "status": status, "source": source, "date": date, "subtype": subtype, "reference": reference},
            via="console", remote=remote_of(request))
    except ActionRefused as exc:
        return _back(request, target, str(exc), ok=False)
    outcome = done["outcome"]
    return _back(request, target, f"outcome recorded: EGFR {outcome['status'].replace('_', ' ')} ({outcome['source']})"
                 if done["changed"] else "outcome unchanged")


@router.get("/performance")
def performance_page(request: Request, bundle: int | None = Query(None, ge=1, le=2**31 - 1), include_primary: str = "") -> HTMLResponse:
    import base64

    console = _console(request)
    try:
        report = console.performance(bundle, include_primary == "yes")
    except ActionRefused as exc:
        return error_page(request, 404, str(exc))
    png = console.reliability_png(report)
    return _render(request, "performance.html", report=report, comparison=report["comparison"],
                   bundles=console.bundles(), include_primary=include_primary == "yes",
                   reliability=base64.b64encode(png).decode("ascii") if png else None)


@router.post("/models/shadow", dependencies=[Action])
def model_shadow(request: Request, key: str = Form("", max_length=4096)) -> Response:
    try:
        done = _console(request).shadow(user_of(request), key.strip() or None, remote=remote_of(request))
    except ActionRefused as exc:
        return _back(request, "/models", f"shadow refused: {exc}", ok=False)
    return _back(request, "/models", done["outcome"])


@router.post("/models/promote", dependencies=[Action])
def model_promote(request: Request, force: str = Form(default="", max_length=8)) -> Response:
    try:
        done = _console(request).promote(user_of(request), force=force == "yes", remote=remote_of(request))
    except ActionRefused as exc:
        return _back(request, "/models", f"promotion refused: {exc}", ok=False)
    return _back(request, "/models", done["outcome"])


@router.post("/studies/{study_uid}/replay", dependencies=[Action])
def study_replay(study_uid: StudyUid, request: Request) -> Response:
    try:
        done = _console(request).replay(user_of(request), study_uid, rerun=False, remote=remote_of(request))
    except ActionRefused as exc:
        return _back(request, "/studies", f"replay refused: {exc}", ok=False)
    return _back(request, f"/jobs/{done['job']['id']}", done["outcome"])


@router.get("/models")
def models_page(request: Request) -> HTMLResponse:
    return _render(request, "models.html", bundles=_console(request).bundles())


@router.get("/models/{model_id}")
def model_page(model_id: RowId, request: Request) -> HTMLResponse:
    try:
        bundle = _console(request).bundle(model_id)
    except ActionRefused as exc:
        return error_page(request, 404, str(exc))
    return _render(request, "model.html", bundle=bundle)


@router.post("/models/activate", dependencies=[Action])
def model_activate(request: Request, key: str = Form(max_length=4096), force: str = Form(default="", max_length=8)) -> Response:
    try:
        done = _console(request).activate(user_of(request), key.strip(), remote=remote_of(request), force=force == "yes")
    except ActionRefused as exc:
        return _back(request, "/models", f"activation refused: {exc}", ok=False)
    return _back(request, "/models", done["outcome"])


@router.get("/destinations")
def destinations_page(request: Request) -> HTMLResponse:
    return _render(request, "destinations.html", destinations=_console(request).destinations())


@router.post("/destinations/{name}/echo", dependencies=[Action])
def destination_echo(name: DestinationName, request: Request) -> Response:
    try:
        done = _console(request).echo(user_of(request), name, remote=remote_of(request))
    except ActionRefused as exc:
        return _back(request, "/destinations", str(exc), ok=False)
    return _back(request, "/destinations", f"{name}: {done['outcome']} ({done['seconds']:.2f} s)", ok=done["ok"])


@router.get("/fetch")
def fetch_page(request: Request) -> HTMLResponse:
    return _render(request, "fetch.html", sources=_console(request).sources(), found=None, asked={})


@router.post("/fetch/search", dependencies=[Action])
async def fetch_search(request: Request, source: str = Form("", max_length=64), accession: str = Form("", max_length=16),
                       patient_id: str = Form("", max_length=64), study_date: str = Form("", max_length=17)) -> Response:
    """A search of a source (POST: the patient ID never goes into a URL); admins only."""
    asked = {"source": source, "accession": accession, "patient_id": patient_id, "study_date": study_date}
    try:
        found = await asyncio.to_thread(_console(request).find_studies, user_of(request), source or None,
                                        accession=accession, patient_id=patient_id, study_date=study_date,
                                        remote=remote_of(request))
    except ActionRefused as exc:
        return _back(request, "/fetch", str(exc), ok=False)
    return _render(request, "fetch.html", sources=_console(request).sources(), found=found, asked=asked)


@router.post("/fetch/retrieve", dependencies=[Action])
def fetch_retrieve(request: Request, source: str = Form("", max_length=64), study_uid: str = Form(max_length=64)) -> Response:
    try:
        done = _console(request).fetch(user_of(request), source or None, study_uid, remote=remote_of(request))
    except ActionRefused as exc:
        return _back(request, "/fetch", str(exc), ok=False)
    return _back(request, "/fetch", done["outcome"])


@router.get("/audit")
def audit_page(request: Request) -> HTMLResponse:
    return _render(request, "audit.html", entries=_console(request).audit(500))
