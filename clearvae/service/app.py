"""The REST service (issue 18): one FastAPI app, a thin front end over the library.

    request --Gate (token, body size)--> endpoint: check the upload's header, resolve the model
        by name --> JobQueue (bounded) --worker--> tasks.* (the CLI's library calls)
        --> PNG bytes, or JSON (numbers, base64 files); or at once {"job": id} (?async=1)

Endpoints (all /api ones need the token when one is set; OpenAPI at /docs):

    GET  /health                 status, version, workers and queue
    GET  /api/models             the models on offer, by name, and their tasks
    POST /api/compress           image -> .cvae (base64), bytes, bpp, PSNR, decoded PNG
    POST /api/compare            image + psnr -> what JPEG and WebP need for that PSNR
    POST /api/decompress         .cvae -> PNG
    POST /api/denoise            image -> denoised, std and sample PNGs, the noise level
    POST /api/inpaint            image + mask (white: fill) -> PNG
    POST /api/sample             model, n, temperature, seed -> grid PNG
    POST /api/interpolate        model, images a and b -> strip PNG
    GET  /api/jobs/{id}          a job's state, progress and (when done) result as JSON
    GET  /api/jobs/{id}/result   the result as the endpoint answers it (PNG or JSON)
    DELETE /api/jobs/{id}        cancel it (or drop its result)

Every error is ``{"error": ..., "detail": ...}`` with its status (``errors``); unexpected ones
are logged here and answered with a 500 that carries no trace. ``/`` serves
``static/index.html`` when the package has one (the web page), else a placeholder; the page's
scripts and styles are under ``/static/`` (no token: the page holds no data).
"""

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from clearvae import __version__
from clearvae.compress import Settings, is_gray_volume
from clearvae.restore.files import is_volume_input
from clearvae.service import tasks
from clearvae.service.errors import ServiceError, client_errors
from clearvae.service.gate import Gate
from clearvae.service.jobs import Job, JobQueue, Outcome
from clearvae.service.models import ModelRegistry
from clearvae.service.settings import ServiceSettings
from clearvae.service.uploads import Workdir, save_cvae, save_image

log = logging.getLogger("clearvae.service")

STATIC = Path(__file__).parent / "static"  # the web page, when it ships (index.html)
PLACEHOLDER = """<!doctype html><html lang="en"><meta charset="utf-8"><title>clearvae</title>
<body><h1>clearvae</h1><p>The clearvae service is running. The web page is not part of this
install; the API and its documentation are at <a href="/docs">/docs</a>.</p></body></html>"""


@dataclass
class Service:
    """What every request shares."""

    settings: ServiceSettings
    models: ModelRegistry
    jobs: JobQueue

    def hidden(self, work: Workdir) -> list[Path]:
        """Server folders that no message may show."""
        return [work.path, *self.models.folders]

    async def run(self, kind: str, task: Callable[[Job], Outcome], work: Workdir,
                  asynchronous: bool) -> Response:
        """Queue ``task`` as a job that owns ``work``; answer with its result, or at once
        with its id (202) when ``asynchronous``."""
        hidden = self.hidden(work)

        def job_work(job: Job) -> Outcome:
            with client_errors(hidden):
                return task(job)

        job = self.jobs.submit(kind, job_work, self.settings.timeout, cleanup=work.remove)
        work.keep()  # the job removes it when over
        if asynchronous:
            url = f"/api/jobs/{job.id}"
            return JSONResponse({"job": job.id, "state": job.state, "url": url}, 202,
                                headers={"Location": url})
        if not await self.jobs.wait(job, self.settings.timeout):
            self.jobs.cancel(job)
            raise ServiceError(504, f"the request took longer than this server's limit of "
                               f"{self.settings.timeout:g} s and was cancelled: ask for less "
                               "work, or send it with ?async=1 and poll /api/jobs/{id}",
                               {"job": job.id})
        self.jobs.forget(job)
        if job.error is not None:
            raise job.error
        return _response(job.outcome)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service's app (serve it with uvicorn; ``clearvae serve`` does)."""
    settings = settings or ServiceSettings()
    service = Service(settings, ModelRegistry(settings.models),
                      JobQueue(settings.workers, settings.queue))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.jobs.close()

    app = FastAPI(title="clearvae", version=__version__, lifespan=lifespan,
                  description="VAE image compression, restoration and generation. Uploads "
                  "are multipart form fields; images come back as PNG bytes (or base64 in "
                  "JSON). Add ?async=1 to any POST to get a job id at once.")
    app.state.service = service
    app.include_router(public)
    app.include_router(api)
    if STATIC.is_dir():  # the web page's scripts and styles
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(Gate, token=settings.token, max_bytes=settings.max_upload_bytes)
    if settings.cors:  # outermost: errors from the gate carry the CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors),
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


def _service(request: Request) -> Service:
    return request.app.state.service


# --- responses and errors ---------------------------------------------------------------------

def _response(outcome: Outcome) -> Response:
    if outcome.png is not None:
        return Response(outcome.png, media_type="image/png")
    return JSONResponse(outcome.data)


def _as_json(outcome: Outcome) -> dict[str, Any]:
    return {**outcome.data, **({"png": tasks.b64(outcome.png)} if outcome.png else {})}


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query",
                                                                               "path")),
               "message": e.get("msg", "")} for e in exc.errors()]
    text = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return JSONResponse({"error": f"invalid request: {text}", "detail": fields}, 422)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail), "detail": None}, exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error: the server logged the details",
                         "detail": None}, 500)


# --- endpoints --------------------------------------------------------------------------------

public = APIRouter()
# The bearer scheme is declared for the OpenAPI page (its "Authorize" button) and checks
# nothing: the Gate enforces the token, before the body is read.
bearer = HTTPBearer(auto_error=False, description="the --token of clearvae serve, if any")
api = APIRouter(prefix="/api", dependencies=[Depends(bearer)])
Async = Annotated[bool, Query(alias="async", description="answer at once with a job id (202)")]
ModelName = Annotated[str | None, Form(description="a name from /api/models (default: the "
                                       "bundled model for the task)")]
ImageFile = Annotated[UploadFile, File(description="PNG, JPEG, BMP, TIFF or WebP")]


@public.get("/", include_in_schema=False)
async def index() -> Response:
    page = STATIC / "index.html"
    return FileResponse(page) if page.is_file() else HTMLResponse(PLACEHOLDER)


@public.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Whether the service is up, and how busy."""
    return {"status": "ok", "version": __version__, **_service(request).jobs.stats()}


@api.get("/models")
async def models(request: Request) -> dict[str, Any]:
    """The models on offer by name: the bundled ones and those under --models."""
    return {"models": [e.describe() for e in _service(request).models.entries()]}


@api.post("/compress")
async def compress(
    request: Request, image: ImageFile, asynchronous: Async = False, model: ModelName = None,
    quality: Annotated[float | None, Form(ge=1, description="1 (smallest) .. the model's "
                                          "highest (8 for the bundled), steps of 1/16; "
                                          "default 4")] = None,
    effort: Annotated[int, Form(ge=0, le=3, description="encode time for a smaller file")] = 0,
    target_bpp: Annotated[float | None, Form(gt=0)] = None,
    max_bytes: Annotated[int | None, Form(ge=1)] = None,
    target_psnr: Annotated[float | None, Form(gt=0, lt=100)] = None,
    max_error: Annotated[int | None, Form(ge=0, description="16-bit gray images: every value "
                                          "within +-K (0: lossless)")] = None,
    drop_alpha: Annotated[bool, Form(description="code an image with alpha without it")] = False,
) -> Response:
    """Compress an image to a .cvae file (as ``clearvae compress``): its bytes (base64), real
    size and bits per pixel, the quality used, the decoded PNG (base64) and its PSNR."""
    service = _service(request)
    targets = {k: v for k, v in (("target_bpp", target_bpp), ("max_bytes", max_bytes),
                                 ("target_psnr", target_psnr), ("max_error", max_error))
               if v is not None}
    if len(targets) > 1:
        raise ServiceError(422, f"give at most one of target_bpp, max_bytes, target_psnr and "
                           f"max_error, got {', '.join(targets)}")
    if quality is not None and targets and "max_error" not in targets:
        raise ServiceError(422, f"give a quality or {next(iter(targets))}, not both: the "
                           "target chooses the quality")
    settings = Settings(quality=quality, effort=effort, target_bpp=target_bpp,
                        max_bytes=max_bytes, target_psnr=target_psnr, max_error=max_error)
    limit = service.settings.max_pixels
    with Workdir() as work, client_errors(service.hidden(work)):
        source = save_image(work.path, "image", await image.read(), limit).path
        gray = is_gray_volume(source)  # 16-bit gray: the gray codec, as in the CLI
        entry = service.models.get(model, "compress", gray)
        if gray and entry.channels != 1:
            raise ServiceError(409, f"the image is 16-bit gray and '{entry.name}' a colour "
                               "codec: give model=NAME of a gray codec (see /api/models)")
        return await service.run("compress", lambda job: tasks.compress(
            job, service.models.load(entry), source, settings, drop_alpha, limit), work,
            asynchronous)


@api.post("/compare")
async def compare(
    request: Request, image: ImageFile,
    psnr: Annotated[float, Form(gt=0, lt=100, description="the PSNR to reach, dB (e.g. "
                                "the psnr of /api/compress)")],
    asynchronous: Async = False, drop_alpha: Annotated[bool, Form()] = False,
) -> Response:
    """What JPEG and WebP (Pillow) need to reach ``psnr`` on an 8-bit image: the quality
    setting, bytes and bits per pixel of each one's smallest file that does."""
    service = _service(request)
    with Workdir() as work, client_errors(service.hidden(work)):
        source = save_image(work.path, "image", await image.read(),
                            service.settings.max_pixels).path
        return await service.run("compare", lambda job: tasks.compare(job, source, psnr,
                                                                       drop_alpha),
                                 work, asynchronous)


@api.post("/decompress", response_class=Response,
          responses={200: {"content": {"image/png": {}}, "description": "the decoded image"}})
async def decompress(
    request: Request, file: Annotated[UploadFile, File(description="a .cvae file")],
    asynchronous: Async = False,
    model: Annotated[str | None, Form(description="the codec that wrote it (default: the "
                                      "one of this server whose id the file carries)")] = None,
) -> Response:
    """Decompress a .cvae file to PNG (8-bit, or 16-bit gray), as ``clearvae decompress``."""
    service = _service(request)
    limit = service.settings.max_pixels
    with Workdir() as work, client_errors(service.hidden(work)):
        source, model_id = save_cvae(work.path, "file", await file.read(), limit)
        if model is None:
            entry = service.models.codec_for(model_id)
            if entry is None:
                raise ServiceError(409, f"the file was compressed with a model this server "
                                   f"does not have (id {model_id.hex()}): see /api/models",
                                   {"model_id": model_id.hex()})
        else:
            entry = service.models.get(model, "decompress")
            if entry.model_id is not None and entry.model_id != model_id.hex():
                raise ServiceError(409, f"the file was compressed with another model (id "
                                   f"{model_id.hex()}) than '{entry.name}' (id "
                                   f"{entry.model_id}): give the model that compressed it",
                                   {"model_id": model_id.hex()})
        return await service.run("decompress", lambda job: tasks.decompress(
            job, service.models.load(entry), source, limit), work, asynchronous)


@api.post("/denoise")
async def denoise(
    request: Request, image: ImageFile, asynchronous: Async = False, model: ModelName = None,
    samples: Annotated[int, Form(ge=1, le=16, description="posterior draws (std map and "
                                 "samples)")] = 8,
    keep: Annotated[int, Form(ge=0, le=8, description="sample images to return")] = 2,
    sigma: Annotated[float | None, Form(gt=0, le=255, description="noise std on the 0-255 "
                                        "scale (default: estimated)")] = None,
    seed: Annotated[int, Form(ge=0)] = 0,
    ignore_noise_level: Annotated[bool, Form(description="denoise even far noisier images "
                                             "than the model knows")] = False,
) -> Response:
    """Denoise an image, as ``clearvae denoise --std --save-samples``: the denoised PNG, the
    per-pixel std PNG and ``keep`` sample PNGs (base64), and the noise level used."""
    service = _service(request)
    with Workdir() as work, client_errors(service.hidden(work)):
        source = save_image(work.path, "image", await image.read(),
                            service.settings.max_pixels).path
        entry = service.models.get(model, "denoise", is_volume_input(source))
        return await service.run("denoise", lambda job: tasks.denoise(
            job, service.models.load(entry), source, samples, keep, sigma, seed,
            ignore_noise_level), work, asynchronous)


@api.post("/inpaint", response_class=Response,
          responses={200: {"content": {"image/png": {}}, "description": "the filled image"}})
async def inpaint(
    request: Request, image: ImageFile,
    mask: Annotated[UploadFile, File(description="same size; white where pixels are to be "
                                     "filled")],
    asynchronous: Async = False, model: ModelName = None,
    iterations: Annotated[int, Form(ge=1, le=100)] = 20,
    seed: Annotated[int, Form(ge=0)] = 0,
) -> Response:
    """Fill the masked pixels of an image, as ``clearvae inpaint``."""
    service = _service(request)
    limit = service.settings.max_pixels
    with Workdir() as work, client_errors(service.hidden(work)):
        source = save_image(work.path, "image", await image.read(), limit).path
        holes = save_image(work.path, "mask", await mask.read(), limit).path
        entry = service.models.get(model, "inpaint", is_volume_input(source))
        return await service.run("inpaint", lambda job: tasks.inpaint(
            job, service.models.load(entry), source, holes, iterations, seed), work,
            asynchronous)


@api.post("/sample", response_class=Response,
          responses={200: {"content": {"image/png": {}}, "description": "the grid"}})
async def sample(
    request: Request,
    model: Annotated[str, Form(description="a VAE's name from /api/models")],
    asynchronous: Async = False,
    n: Annotated[int, Form(ge=1, le=256)] = 16,
    temperature: Annotated[float, Form(gt=0, le=10)] = 1.0,
    seed: Annotated[int, Form(ge=0)] = 0,
    size: Annotated[str | None, Form(pattern=r"^\d{1,5}x\d{1,5}$", description="HxW, for "
                                     "models of any size (default: the training size)")]
    = None,
) -> Response:
    """A grid of ``n`` samples from a VAE, as ``clearvae sample``."""
    service = _service(request)
    hw = tuple(int(v) for v in size.split("x")) if size else None
    limit = service.settings.max_pixels  # n samples of hw pixels in all: checked by the task
    with Workdir() as work, client_errors(service.hidden(work)):
        entry = service.models.get(model, "sample")
        return await service.run("sample", lambda job: tasks.sample(
            job, service.models.load(entry), work.path, n, temperature, seed, hw, limit),
            work, asynchronous)


@api.post("/interpolate", response_class=Response,
          responses={200: {"content": {"image/png": {}}, "description": "the strip"}})
async def interpolate(
    request: Request,
    model: Annotated[str, Form(description="a VAE's name from /api/models")],
    a: ImageFile, b: ImageFile, asynchronous: Async = False,
    steps: Annotated[int, Form(ge=2, le=32)] = 8,
) -> Response:
    """The strip from image a to image b through a VAE's latent space, as ``clearvae
    interpolate``."""
    service = _service(request)
    limit = service.settings.max_pixels
    with Workdir() as work, client_errors(service.hidden(work)):
        first = save_image(work.path, "a", await a.read(), limit).path
        second = save_image(work.path, "b", await b.read(), limit).path
        entry = service.models.get(model, "interpolate")
        return await service.run("interpolate", lambda job: tasks.interpolate(
            job, service.models.load(entry), first, second, steps), work, asynchronous)


@api.get("/jobs/{job_id}")
async def job_status(request: Request, job_id: str) -> dict[str, Any]:
    """A job's state and progress; its result (as JSON, images in base64) once done."""
    job = _job(request, job_id)
    out = job.status()
    if job.outcome is not None:
        out["result"] = _as_json(job.outcome)
    return out


@api.get("/jobs/{job_id}/result", response_class=Response,
         responses={200: {"content": {"image/png": {}, "application/json": {}}}})
async def job_result(request: Request, job_id: str) -> Response:
    """A finished job's result as its endpoint answers it: PNG bytes, or JSON."""
    job = _job(request, job_id)
    if job.error is not None:
        raise job.error
    if job.outcome is None:
        raise ServiceError(409, f"job {job_id} is {job.state}: no result yet",
                           {"state": job.state, "progress": job.fraction})
    return _response(job.outcome)


@api.delete("/jobs/{job_id}")
async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    """Cancel a job (at once when queued, at its next progress step when running), or drop a
    finished job's result."""
    service = _service(request)
    job = _job(request, job_id)
    if job.done:
        service.jobs.forget(job)
    else:
        service.jobs.cancel(job)
    return job.status()


def _job(request: Request, job_id: str) -> Job:
    job = _service(request).jobs.get(job_id)
    if job is None:
        raise ServiceError(404, f"no job {job_id!r}: it never existed, or its result was "
                           "fetched or expired")
    return job
