"""`facerec serve`: the engine as an HTTP service over one gallery, with a web page (facerec.service)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from facerec.cli.options import (
    FiniteRange,
    OutputFolder,
    aligner_options,
    backbone_options,
    detector_options,
    explicit_models,
    gallery_option,
    precision_option,
)


@click.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one)."
)
@gallery_option
@click.option(
    "--api-keys",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File of lines 'KEY read' or 'KEY write'; then every /v1 request needs 'Authorization: Bearer KEY'. "
    "FACEREC_API_KEYS may hold the same entries, separated by commas or newlines.",
)
@click.option(
    "--max-upload",
    default="20MB",
    show_default=True,
    help="Largest request body (413 beyond): 20MB, 512KiB, 1000000.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most faces of concurrent requests embedded in one backbone call; 1 turns batching off.",
)
@click.option(
    "--batch-wait-ms",
    type=FiniteRange(min=0),
    default=5.0,
    show_default=True,
    help="Longest wait for more work once a batch (of faces, of images) has its first.",
)
@click.option(
    "--max-detect-batch",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Most images of concurrent requests detected in one detector call (and at most the detector's "
    "working size in pixels: one large photo, or many small ones); 1 turns detection batching off: "
    "each image is detected on its own CPU thread, the lowest latency for a lone client.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Image requests processed or waiting at once; one more is answered 503.",
)
@click.option(
    "--read-timeout",
    type=FiniteRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a request body may go without a byte (408 beyond); it must also average 64 kB/s "
    "beyond its first --read-timeout seconds.",
)
@click.option(
    "--max-uploads",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Request bodies being received at once; one more is answered 503.",
)
@click.option(
    "--max-pixels-in-flight",
    type=click.IntRange(min=1),
    default=200_000_000,
    show_default=True,
    help="Decoded pixels of the images being decoded and detected at once; a larger image is answered "
    "413, one that does not fit beside the others waits (--pixel-wait), then 503.",
)
@click.option(
    "--pixel-wait",
    type=FiniteRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds an image waits for room in --max-pixels-in-flight before 503 (0: none).",
)
@click.option(
    "--uploads",
    type=OutputFolder(),
    help="Folder for the photos of faces enrolled over HTTP (one folder per gallery) [default: inside the "
    "gallery: a folder gallery's uploads/, a Milvus Lite database's; a gallery on a database server needs it].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Threads decoding and detecting images [default: one per CPU core].",
)
@backbone_options
@precision_option
@detector_options
@aligner_options
@click.pass_context
def command(
    ctx,
    host,
    port,
    gallery,
    api_keys,
    max_upload,
    max_batch,
    batch_wait_ms,
    max_detect_batch,
    max_queue,
    read_timeout,
    max_uploads,
    max_pixels_in_flight,
    pixel_wait,
    uploads,
    workers,
    device,
    **_models,
):
    """Serve the gallery over HTTP: detect, embed, identify, verify, enroll and delete faces, a web
    page at /, the API's documentation at /docs.

    The gallery's own models answer (model options, when given, must be the gallery's; for a gallery
    not written yet they choose the models of its first enrollment). Enrollments and deletions write
    new gallery versions as `facerec index` does, and a version written by any process is served from
    the next request on. Without API keys the server listens only on loopback addresses.
    """
    from facerec.service.auth import ENVIRONMENT, check_host, load_keys
    from facerec.service.limits import parse_size

    keys = load_keys(api_keys, os.environ.get(ENVIRONMENT))
    check_host(host, bool(keys))
    upload_limit = parse_size(max_upload, "--max-upload")

    from facerec.gallery.models import ModelRequest  # the heavy imports, once the options are known good
    from facerec.service.app import Settings
    from facerec.service.server import bind, open_service, run

    settings = Settings(
        gallery,
        keys,
        max_upload=upload_limit,
        max_queue=max_queue,
        read_timeout=read_timeout,
        max_uploads=max_uploads,
        max_pixels=max_pixels_in_flight,
        pixel_wait=pixel_wait,
        uploads=uploads,
    )
    request = ModelRequest(device=device, **explicit_models(ctx))
    service = open_service(settings, request, max_batch, batch_wait_ms / 1000, workers, max_detect_batch)
    run(service, bind(host, port))
