"""Model package archives, ``/artifacts/{sha256}``: public (named by their sha256, verified on the
device against a signed manifest; devices hold no API token), with HTTP Range so downloads resume.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.responses import Response

from cloud_sync.api.deps import CloudDep
from cloud_sync.artifacts import artifact_path
from cloud_sync.errors import NotFound
from edge_agent.serving.openapi import Responses, errors

# Artifacts are public: named by their sha256 (known only from a device's desired state) and
# verified on the device against a signed manifest; devices hold no API token.
PUBLIC_PREFIXES = ("/artifacts/",)
SHA256_PATTERN = r"^[0-9a-f]{64}$"
TAR = {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}
ARTIFACT: Responses = {
    200: {"description": "The archive", "content": TAR},
    206: {"description": "The requested byte range", "content": TAR},
    416: {"description": "Range not satisfiable"},
}
ARTIFACT |= errors(404)

router = APIRouter()


@router.api_route(
    "/artifacts/{sha256}",
    methods=["GET", "HEAD"],
    tags=["models"],
    summary="A model package archive (HTTP Range: resumable); no token needed",
    response_model=None,
    response_class=FileResponse,
    responses=ARTIFACT,
)
def get_artifact(cloud: CloudDep, sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN)]) -> Response:
    path = artifact_path(cloud.artifacts, sha256)
    if not path.is_file():
        raise NotFound(f"no artifact {sha256}")
    return FileResponse(
        path,
        media_type="application/x-tar",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "public, max-age=31536000, immutable"},
    )
