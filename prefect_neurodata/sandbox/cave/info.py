"""Info service of the CAVE stand-in (AnnotationFrameworkInfoService v2, reference §1.2).

One aligned volume and one datastack. The full datastack record points at the LOCAL server for
local services (``local_server``, ``segmentation_source = graphene://{local}/segmentation/table/
{pcg}``) and at the GLOBAL server for global ones.

Example:
    >>> from .world import CaveConfig
    >>> rec = datastack_record(CaveConfig(), "http://127.0.0.1:2", "http://127.0.0.1:1")
    >>> rec["segmentation_source"]
    'graphene://http://127.0.0.1:2/segmentation/table/minnie_sandbox_pcg'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request

from .auth import User, check_permission, current_user
from .errors import CaveHTTPError

if TYPE_CHECKING:
    from .world import CaveConfig

INFO_SERVER_VERSION = "4.3.3"
router = APIRouter()
_I = "/info/api/v2"


def aligned_volume_record(config: CaveConfig) -> dict[str, Any]:
    """The aligned-volume record."""
    return {
        "id": config.aligned_volume_id,
        "name": config.aligned_volume,
        "display_name": "Sandbox aligned volume",
        "description": "Synthetic EM volume of the neurodata sandbox",
        "image_source": f"precomputed://gs://neurodata-sandbox/{config.aligned_volume}/em",
    }


def image_sources(config: CaveConfig) -> list[dict[str, Any]]:
    """Image sources (mirrors) of the datastack."""
    return [
        {
            "id": 1,
            "name": "default",
            "viewer_layer_name": "img",
            "image_source": f"precomputed://gs://neurodata-sandbox/{config.aligned_volume}/em",
            "description": "primary image source",
        },
        {
            "id": 2,
            "name": "mirror",
            "viewer_layer_name": "img",
            "image_source": f"precomputed://https://mirror.sandbox.local/{config.aligned_volume}/em",
            "description": "https mirror",
        },
    ]


def datastack_record(
    config: CaveConfig, local_url: str, global_url: str, image_source_name: str | None = None
) -> dict[str, Any]:
    """The full datastack record (``DataStackSchemaFull``)."""
    av = aligned_volume_record(config)
    if image_source_name is not None:
        match = [s for s in image_sources(config) if s["name"] == image_source_name]
        if not match:
            raise CaveHTTPError(404, f"image source {image_source_name} not found")
        av["image_source"] = match[0]["image_source"]
    res = config.voxel_resolution
    return {
        "aligned_volume": av,
        "segmentation_source": f"graphene://{local_url}/segmentation/table/{config.pcg_table}",
        "skeleton_source": None,
        "analysis_database": None,
        "viewer_site": f"{global_url}/neuroglancer/",
        "synapse_table": "synapses",
        "soma_table": "nucleus_detection",
        "local_server": local_url,
        "description": "Neurodata sandbox datastack (synthetic, deterministic)",
        "viewer_resolution_x": float(res[0]),
        "viewer_resolution_y": float(res[1]),
        "viewer_resolution_z": float(res[2]),
        "proofreading_status_table": None,
        "cell_identification_table": "nucleus_detection",
        "proofreading_review_table": None,
    }


def _check_datastack(request: Request, user: User, datastack: str) -> None:
    world = request.app.state.world
    if datastack != world.config.datastack:
        raise CaveHTTPError(404, f"datastack {datastack} not found")
    check_permission(request, user, world.auth.dataset_for(datastack), "view")


@router.get("/info/version")
def info_version() -> str:
    """Server version."""
    return INFO_SERVER_VERSION


@router.get("/info/api/versions")
def info_api_versions() -> list[int]:
    """Supported API versions."""
    return [2]


@router.get(_I + "/datastacks")
def datastacks(request: Request, user: User = Depends(current_user)) -> list[str]:
    """Datastacks the caller may view."""
    return _viewable(request, user, request.app.state.world.config.datastack)


@router.get(_I + "/datastack/full/{datastack_name}")
def datastack_full(
    datastack_name: str,
    request: Request,
    image_source_name: str | None = None,
    user: User = Depends(current_user),
) -> dict[str, Any]:
    """The full datastack record."""
    _check_datastack(request, user, datastack_name)
    world = request.app.state.world
    return datastack_record(
        world.config, world.local_url(request), world.global_url(request), image_source_name
    )


@router.get(_I + "/datastack/{datastack_name}/image_sources")
def datastack_image_sources(
    datastack_name: str, request: Request, user: User = Depends(current_user)
) -> list[dict[str, Any]]:
    """Image sources of a datastack."""
    _check_datastack(request, user, datastack_name)
    return image_sources(request.app.state.world.config)


@router.get(_I + "/aligned_volume")
def aligned_volumes(request: Request, user: User = Depends(current_user)) -> list[str]:
    """Aligned volumes the caller may view."""
    return _viewable(request, user, request.app.state.world.config.aligned_volume)


def _viewable(request: Request, user: User, name: str) -> list[str]:
    """``[name]`` when the caller may view the dataset behind it, else ``[]``."""
    world = request.app.state.world
    return [name] if user.has(world.auth.dataset_for(name), "view") else []


@router.get(_I + "/aligned_volume/id/{aligned_volume_id}")
def aligned_volume_by_id(aligned_volume_id: int, request: Request) -> dict[str, Any]:
    """Aligned volume by id (no auth, like the real server)."""
    config = request.app.state.world.config
    if aligned_volume_id != config.aligned_volume_id:
        raise CaveHTTPError(404, f"aligned volume {aligned_volume_id} not found")
    return aligned_volume_record(config)


@router.get(_I + "/aligned_volume/{aligned_volume_name}")
def aligned_volume_info(
    aligned_volume_name: str, request: Request, user: User = Depends(current_user)
) -> dict[str, Any]:
    """Aligned volume record."""
    world = request.app.state.world
    if aligned_volume_name != world.config.aligned_volume:
        raise CaveHTTPError(404, f"aligned volume {aligned_volume_name} not found")
    check_permission(request, user, world.auth.dataset_for(aligned_volume_name), "view")
    return aligned_volume_record(world.config)


@router.get(_I + "/aligned_volume/{aligned_volume_name}/datastacks")
def aligned_volume_datastacks(
    aligned_volume_name: str, request: Request, user: User = Depends(current_user)
) -> list[str]:
    """Datastacks built on an aligned volume."""
    world = request.app.state.world
    if aligned_volume_name != world.config.aligned_volume:
        raise CaveHTTPError(404, f"aligned volume {aligned_volume_name} not found")
    check_permission(request, user, world.auth.dataset_for(aligned_volume_name), "view")
    return [world.config.datastack]
