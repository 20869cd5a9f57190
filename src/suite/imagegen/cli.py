"""`suite imagegen`: serve, run, models, loras, history, make-tiny-model, png-info, samplers, bench.

Light on purpose: torch, diffusers, sqlalchemy and fastapi are imported inside command bodies.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from suite.core.cli_utils import emit, fail, info

app = typer.Typer(help="Image generation with diffusers.", no_args_is_help=True)
models_app = typer.Typer(
    help="Model registry: local diffusers folders and .safetensors files.", no_args_is_help=True
)
loras_app = typer.Typer(
    help="LoRA registry (.safetensors, copied into the managed folder).", no_args_is_help=True
)
history_app = typer.Typer(help="Generation history: list, re-run, delete.")
app.add_typer(models_app, name="models")
app.add_typer(loras_app, name="loras")
app.add_typer(history_app, name="history")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port (7860 for A1111 clients).")] = None,
    a1111: Annotated[bool, typer.Option("--a1111/--no-a1111", help="Serve /sdapi/v1.")] = True,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or mps.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads.")] = None,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Run the generation worker.")] = True,
    reload: Annotated[bool, typer.Option("--reload")] = False,
) -> None:
    """API, A1111 routes, Socket.IO, pages and the generation worker in this process."""
    import os

    os.environ["SUITE_IMAGEGEN__A1111"] = "true" if a1111 else "false"
    os.environ["SUITE_IMAGEGEN__WORKER"] = "true" if worker else "false"
    if device:
        os.environ["SUITE_IMAGEGEN__DEVICE"] = device
    if threads:
        os.environ["SUITE_IMAGEGEN__THREADS"] = str(threads)
    from suite.core.config import reset_settings
    from suite.core.server import run_server

    reset_settings()
    # the Huey consumer (downloads) follows [server] embedded_worker; --worker is the generation worker
    run_server(domains=["imagegen"], host=host, port=port, reload=reload, worker=None)


def _parse_size(size: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", size.strip())
    if not m:
        fail(f"--size must look like 512x512, not {size!r}", 2)
    assert m is not None
    return int(m.group(1)), int(m.group(2))


def _parse_lora(spec: str) -> dict[str, Any]:
    name, _, weight = spec.rpartition(":")
    if not name:
        return {"name": spec, "weight": 1.0}
    try:
        return {"name": name, "weight": float(weight)}
    except ValueError:
        fail(f"--lora must be name:weight, not {spec!r}", 2)
        raise


@app.command()
def run(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to draw.")],
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "",
    model: Annotated[
        str | None, typer.Option(help="Registered model name (default: configured or tiny-sd).")
    ] = None,
    seed: Annotated[int, typer.Option(help="-1 draws one.")] = -1,
    steps: Annotated[int, typer.Option(min=1, max=150)] = 20,
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT, multiples of 8.")] = "512x512",
    sampler: Annotated[str, typer.Option(help="A1111 sampler name.")] = "Euler a",
    schedule: Annotated[str | None, typer.Option(help="karras, exponential, beta, sgm_uniform, ...")] = None,
    cfg: Annotated[float, typer.Option(min=0, max=30)] = 7.0,
    batch: Annotated[int, typer.Option(min=1, max=64)] = 1,
    clip_skip: Annotated[int, typer.Option(min=1, max=12)] = 1,
    lora: Annotated[list[str] | None, typer.Option(help="name:weight, repeatable.")] = None,
    init_image: Annotated[Path | None, typer.Option(help="img2img input image.")] = None,
    strength: Annotated[float, typer.Option(min=0, max=1)] = 0.75,
    mask: Annotated[Path | None, typer.Option(help="inpaint mask (white = repaint).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the PNGs.")] = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """One-shot generation in this process (no server). Ctrl-C cancels and exits 130."""
    import base64

    from suite.core.db import session_scope
    from suite.core.errors import ValidationFailed
    from suite.imagegen import service
    from suite.imagegen.schemas import JobCreate
    from suite.imagegen.worker import Worker

    width, height = _parse_size(size)
    data: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative,
        "model": model,
        "seed": seed,
        "steps": steps,
        "width": width,
        "height": height,
        "sampler": sampler,
        "schedule": schedule,
        "cfg_scale": cfg,
        "batch_size": batch,
        "clip_skip": clip_skip,
        "loras": [_parse_lora(s) for s in lora or []],
        "strength": strength,
    }
    if init_image is not None:
        data["mode"] = "inpaint" if mask is not None else "img2img"
        data["init_image"] = base64.b64encode(init_image.read_bytes()).decode()
        if mask is not None:
            data["mask"] = base64.b64encode(mask.read_bytes()).decode()
    try:
        req = JobCreate.model_validate(data)
    except Exception as exc:
        raise ValidationFailed(str(exc).splitlines()[1] if "\n" in str(exc) else str(exc)) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create output folder {out}: {exc.strerror or exc}")
    worker = Worker().start(recover=False)  # first: a device owned by another process refuses before any row
    try:
        with session_scope() as session:
            job, payload = service.create_job(session, req=req, origin="cli")
            job_id = job.id
            for warning in job.warnings:
                info(f"note: {warning}")
        worker.submit(payload, owner_user_id=None, client_id=None, origin="cli")
        handle = worker.handle(job_id)
        assert handle is not None
        try:
            while not handle.done.wait(0.2):
                pass
        except KeyboardInterrupt:
            worker.cancel(job_id)
            handle.done.wait(30)
            info("cancelled")
            raise typer.Exit(130) from None
    finally:
        worker.stop()
    with session_scope() as session:
        job = service.get_job(session, job_id=job_id)
        result = service.job_read(job)
        files = []
        for image in job.images:
            src = service.image_file(image)
            dest = out / src.name
            dest.write_bytes(src.read_bytes())
            files.append(str(dest))
    result["files"] = files
    if result["status"] != "succeeded":
        err = result["error"] or {"message": result["status"]}
        if as_json:
            emit(result, as_json=True)
        fail(f"job {job_id} {result['status']}: {err['message']}")
    if as_json:
        emit(result, as_json=True)
    else:
        for f in files:
            typer.echo(f)
        info(f"seed {result['seed']}, {result['timings']['gen_ms']:.0f} ms")


@app.command("make-tiny-model")
def make_tiny_model(
    tokenizer: Annotated[str, typer.Option(help="bpe (CLIP merges from open-clip-torch) or char.")] = "bpe",
    size: Annotated[str, typer.Option(help="micro or small.")] = "micro",
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path | None, typer.Option(help="Folder (default <data_dir>/imagegen/tiny).")] = None,
    register: Annotated[bool, typer.Option("--register/--no-register")] = True,
    single_file: Annotated[
        Path | None,
        typer.Option(help="Also write it as one .safetensors in the original (A1111) key layout."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a small real Stable Diffusion pipeline from configs, offline (random weights)."""
    if tokenizer not in ("bpe", "char"):
        fail("--tokenizer must be bpe or char", 2)
    from suite.core.db import session_scope
    from suite.imagegen import ml, service
    from suite.imagegen.models import ImageModel
    from suite.imagegen.packaged import CLIP_BPE, locate

    target = out or service.tiny_dir()
    if target.exists() and any(target.iterdir()):
        fail(f"{target} is not empty; remove it or pass --out", 2)
    if tokenizer == "bpe" and locate() is None:
        info(f"CLIP BPE merges not installed ({CLIP_BPE.install_command}); using the char-level vocabulary")
    result = ml.build_tiny_model(target, tokenizer=tokenizer, size=size, seed=seed)
    if single_file is not None:
        if single_file.suffix != ".safetensors":
            fail("--single-file must end in .safetensors", 2)
        result["single_file"] = ml.export_single_file(target, single_file)["path"]
    if register:
        with session_scope() as session:
            from sqlalchemy import select

            old = session.scalar(select(ImageModel).where(ImageModel.name == service.TINY_NAME))
            if old is not None:
                session.delete(old)
                session.flush()
            model = service.add_model(
                session, path=target, name=service.TINY_NAME, family="tiny", source="builtin"
            )
            result["model"] = model.name
            result["sha256"] = model.sha256
    emit(result, as_json=as_json)


def _model_row(model: Any) -> dict[str, Any]:
    from suite.imagegen import service

    return {
        "id": model.id,
        "name": model.name,
        "family": model.family,
        "source": model.source,
        "config": model.config_skeleton,
        "status": model.status,
        "title": service.title_of(model),
        "size_bytes": model.size_bytes,
        "path": model.path,
    }


@models_app.command("add")
def models_add(
    path: Annotated[Path, typer.Argument(help="A diffusers folder or a .safetensors file.")],
    name: Annotated[str | None, typer.Option(help="Registry name (default: the file name).")] = None,
    family: Annotated[str, typer.Option(help="auto, sd15, sd2, sd2v, sdxl, sdxl_refiner, inpaint.")] = "auto",
    copy: Annotated[
        bool, typer.Option("--copy/--link", help="Copy into the managed folder or link in place.")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Single files of an architecture without a bundled skeleton: a diffusers folder of the same "
            "architecture (its configs and tokenizer are copied, never its weights)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a local model (nothing is downloaded). Single .safetensors files of SD1.5, SD2 (--family sd2v for
    768 v-prediction) and SDXL load offline with the bundled config skeletons."""
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as session:
        model = service.add_model(session, path=path, name=name, family=family, copy=copy, config=config)
        emit(_model_row(model), as_json=as_json)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Registered models."""
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as session:
        rows = [_model_row(m) for m in service.list_models(session)]
    emit(
        rows,
        as_json=as_json,
        title="models",
        columns=None if as_json else ["name", "family", "status", "title"],
    )


@models_app.command("verify")
def models_verify(name: str, as_json: JsonOpt = False) -> None:
    """Recompute a model's sha256 and compare it with the registry."""
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as session:
        result = service.verify_model(session, ref=name)
    emit(result, as_json=as_json)
    if not result["ok"]:
        raise typer.Exit(1)


@models_app.command("rm")
def models_rm(
    name: str,
    delete_files: Annotated[bool, typer.Option("--delete-files", help="Also delete managed files.")] = False,
) -> None:
    """Remove a model from the registry."""
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as session:
        service.remove_model(session, ref=name, delete_files=delete_files)
    info(f"removed {name}")


@models_app.command("download")
def models_download(
    source: Annotated[
        str, typer.Argument(help="An https:// URL of a .safetensors, or a hub repo id owner/name.")
    ],
    filename: Annotated[
        str | None, typer.Option(help="Hub: a single file of the repo (default: the diffusers folder).")
    ] = None,
    revision: Annotated[str, typer.Option(help="Hub revision.")] = "main",
    name: Annotated[str | None, typer.Option(help="Registry name (default: from the file or repo).")] = None,
    family: Annotated[str, typer.Option(help="auto, sd15, sd2, sd2v, sdxl, ...")] = "auto",
    sha256: Annotated[
        str | None, typer.Option(help="Expected sha256 (the hub's LFS hash otherwise).")
    ] = None,
    size: Annotated[int | None, typer.Option(min=0, help="Expected size in bytes.")] = None,
    background: Annotated[
        bool, typer.Option("--background", help="Queue it for `suite worker` instead of running it here.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a model (resumable, size and sha256 checked, .safetensors only) and register it. Off by default:
    needs [imagegen] allow_downloads = true, and is refused when HF_HUB_OFFLINE=1."""
    import os

    if not background:  # run the job in this process (a core_job row records it all the same)
        os.environ["SUITE_JOBS__IMMEDIATE"] = "true"
        from suite.core.config import reset_settings

        reset_settings()
    from suite.imagegen import downloads

    is_url = source.startswith(("http://", "https://"))
    job = downloads.submit(
        source="url" if is_url else "hub",
        url=source if is_url else None,
        repo_id=None if is_url else source,
        filename=filename,
        revision=revision,
        name=name,
        family=family,
        sha256=sha256,
        size=size,
    )
    row = {
        "job_id": job.id,
        "state": job.state,
        "error": job.error,
        "result": job.result,
    }
    if job.state == "failed":
        if as_json:
            emit(row, as_json=True)
        fail(f"download failed: {job.error}")
    emit(row, as_json=as_json)
    if background:
        info(f"queued as job {job.id}; `suite worker` runs it (`suite jobs` shows it)")


@loras_app.command("add")
def loras_add(
    path: Path,
    name: Annotated[str | None, typer.Option(help="Registry name.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a LoRA .safetensors and copy it into the managed folder."""
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as session:
        lora = service.add_lora(session, name=name or path.stem, path=path)
        emit({"name": lora.name, "sha256": lora.sha256, "family": lora.family}, as_json=as_json)


@loras_app.command("list")
def loras_list(as_json: JsonOpt = False) -> None:
    """Registered LoRAs."""
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as session:
        rows = [
            {"name": lo.name, "short_hash": lo.short_hash, "family": lo.family, "size_bytes": lo.size_bytes}
            for lo in service.list_loras(session)
        ]
    emit(rows, as_json=as_json, title="LoRAs")


@loras_app.command("rm")
def loras_rm(name: str) -> None:
    """Remove a LoRA and its file."""
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as session:
        service.remove_lora(session, name=name)
    info(f"removed {name}")


@history_app.callback(invoke_without_command=True)
def history(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO date or datetime.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Past jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from datetime import datetime

    from suite.core.db import session_scope
    from suite.imagegen import service

    when = None
    if since:
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            fail(f"--since must be an ISO date, not {since!r}", 2)
    with session_scope() as session:
        jobs, _ = service.list_jobs(session, status=status, model=model, since=when, limit=limit)
        rows = [
            {
                "id": j.id,
                "status": j.status,
                "prompt": j.prompt[:60],
                "seed": j.seed,
                "size": f"{j.width}x{j.height}",
                "images": len(j.images),
                "created_at": j.created_at,
            }
            for j in jobs
        ]
    emit(rows, as_json=as_json, title="jobs")


@history_app.command("rm")
def history_rm(job_id: str) -> None:
    """Delete a finished job and its images."""
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as session:
        service.delete_job(session, job_id=job_id)
    info(f"deleted {job_id}")


@history_app.command("rerun")
def history_rerun(
    job_id: str,
    new_seed: Annotated[bool, typer.Option("--new-seed")] = False,
    out: Annotated[Path, typer.Option()] = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Run a past txt2img job again (same seed unless --new-seed)."""
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as session:
        req = service.rerun_request(service.get_job(session, job_id=job_id), new_seed=new_seed)
    run(
        prompt=req.prompt,
        negative=req.negative_prompt,
        model=req.model,
        seed=req.seed,
        steps=req.steps,
        size=f"{req.width}x{req.height}",
        sampler=req.sampler,
        schedule=req.schedule,
        cfg=req.cfg_scale,
        batch=req.batch_size,
        clip_skip=req.clip_skip,
        lora=[f"{lo.name}:{lo.weight}" for lo in req.loras],
        init_image=None,
        strength=req.strength,
        mask=None,
        out=out,
        as_json=as_json,
    )


@app.command("png-info")
def png_info(file: Path, as_json: JsonOpt = False) -> None:
    """The A1111 parameters stored in a PNG."""
    from PIL import Image

    from suite.imagegen import infotext

    try:
        with Image.open(file) as img:
            text = img.info.get("parameters")
    except (OSError, ValueError) as exc:
        fail(f"{file}: not a readable image ({exc})", 1)
        return
    if not text:
        fail(f"{file} has no parameters chunk", 1)
    emit({"info": text, "parameters": infotext.parse(str(text))}, as_json=as_json)


@app.command()
def samplers(as_json: JsonOpt = False) -> None:
    """Sampler names, their diffusers classes and schedules."""
    from suite.imagegen import samplers as table

    rows = table.describe()
    emit(
        rows,
        as_json=as_json,
        title="samplers",
        columns=None if as_json else ["name", "class", "available", "requires"],
    )


@app.command()
def bench(
    only: Annotated[
        str | None, typer.Option(help="Comma list of b1,b2,b4,b5 (default) and full_size, single_file, gpu.")
    ] = None,
    threads: Annotated[str, typer.Option(help="Thread counts for throughput, e.g. 1,2.")] = "1,2",
    family: Annotated[
        str | None, typer.Option(help="single_file / gpu: families, e.g. sd15,sdxl (sd15 / sd15,sdxl).")
    ] = None,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="gpu: also torch.compile.")] = True,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer repetitions.")] = False,
    rounds: Annotated[
        int | None,
        typer.Option(
            min=3,
            max=1000,
            help="b1 and full_size: counted rounds (b1 60, full_size 3; 5 and 2 with --quick).",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON here.")] = None,
) -> None:
    """The imagegen benchmarks (tiny model; full-size random-weight architectures for single_file and gpu), as
    JSON. Nothing is downloaded."""
    import json
    import os

    from suite.imagegen import bench as benchmarks

    if quick:
        os.environ["SUITE_BENCH_QUICK"] = "1"
    picked = [o.strip() for o in only.split(",") if o.strip()] if only else None
    unknown = set(picked or ()) - set(benchmarks.ALL) - set(benchmarks.EXTRA)
    if unknown:
        fail(
            f"unknown benchmark(s) {', '.join(sorted(unknown))}: use {', '.join(benchmarks.ALL + benchmarks.EXTRA)}",
            2,
        )
    try:
        counts = [int(t) for t in threads.split(",") if t.strip()]
    except ValueError:
        fail(f"--threads must be a comma list of integers, not {threads!r}", 2)
        return
    families = [f.strip() for f in family.split(",") if f.strip()] if family else None
    result = benchmarks.run(
        only=picked,
        threads=counts,
        single_file_families=families,
        gpu_families=families,
        gpu_compile=compile,
        rounds=rounds,
        full_size_rounds=rounds,
    )
    text = json.dumps(result, indent=2, default=str)
    if out:
        out.write_text(text)
    typer.echo(text)
