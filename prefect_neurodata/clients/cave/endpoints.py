"""Every URL template the CAVE clients use, for every service.

Templates are plain ``str.format`` strings. Each service has a *common* dict (version probes that
exist whatever the API version) and one dict per API version; a client merges the common dict
with the dict of the version it negotiated (see `base.Service.connect`) and formats a template
with its ``default_url_mapping`` (``{<server key>: <server address>, ...}``) plus call-specific
keys such as ``table_id`` or ``datastack_name``. A version's dict is written as `_routes` of its
URL prefix, so paths that several versions serve are written once.

Server keys (placeholders naming the host):

* global server: ``i_server_address`` (info), ``auth_server_address``, ``emas_server_address``
  (schema), ``json_server_address`` (state);
* local server: ``cg_server_address`` (chunkedgraph), ``me_server_address`` (materialize),
  ``ae_server_address`` (annotation), ``l2cache_server_address``, ``skeleton_server_address``.

Example:
    ```python
    from prefect_neurodata.clients.cave import endpoints

    url = endpoints.chunkedgraph_endpoints_v1["get_roots"].format(
        cg_server_address="http://127.0.0.1:9000", table_id="test_v1"
    )
    ```
"""

from __future__ import annotations

from collections.abc import Mapping


def _routes(prefix: str, paths: Mapping[str, str]) -> dict[str, str]:
    """``{name: prefix + path}``: one API version's templates under its URL prefix.

    Example:
        ```python
        assert _routes("{s}/api", {"info": "/info"}) == {"info": "{s}/api/info"}
        ```
    """
    return {name: prefix + path for name, path in paths.items()}


default_global_server_address = "https://global.daf-apis.com"
"""The global server (info, auth, schema, state) used when none is given or cached."""

fallback_ngl_url = "https://neuroglancer.neuvue.io/"
"""Neuroglancer deployment used when neither the call, the client nor the datastack names one."""

# ---------------------------------------------------------------------------------------------
# Annotation engine (local server; URLs keyed by aligned volume)
# ---------------------------------------------------------------------------------------------
annotation_common: dict[str, str] = {}

anno_legacy = "{ae_server_address}/annotation"
annotation_endpoints_legacy: dict[str, str] = _routes(
    anno_legacy,
    {
        "datasets": "/datasets",
        "table_names": "/dataset/{dataset_name}",
        "existing_annotation": "/dataset/{dataset_name}/{table_name}/{annotation_id}",
        "new_annotation": "/dataset/{dataset_name}/{table_name}",
    },
)

anno_v2 = "{ae_server_address}/annotation/api/v2"
annotation_endpoints_v2: dict[str, str] = _routes(
    anno_v2 + "/aligned_volume/{aligned_volume_name}/table",
    {
        "tables": "",
        "table_info": "/{table_name}",
        "annotations": "/{table_name}/annotations",
        "table_count": "/{table_name}/count",
    },
)

annotation_api_versions: dict[int, dict[str, str]] = {
    0: annotation_endpoints_legacy,
    2: annotation_endpoints_v2,
}

# ---------------------------------------------------------------------------------------------
# Materialization engine (local server)
# ---------------------------------------------------------------------------------------------
materialization_common: dict[str, str] = {
    "get_api_versions": "{me_server_address}/materialize/api/versions",
    "get_version": "{me_server_address}/materialize/version",
}

mat_v2_api = "{me_server_address}/materialize/api/v2"
mat_v3_api = "{me_server_address}/materialize/api/v3"
_mat_v2_ds = mat_v2_api + "/datastack/{datastack_name}"
_mat_v3_ds = mat_v3_api + "/datastack/{datastack_name}"

# Paths both API versions serve below their own datastack prefix.
_mat_datastack_paths: dict[str, str] = {
    "simple_query": "/version/{version}/table/{table_name}/query",
    "join_query": "/version/{version}/query",
    "versions": "/versions",
    "version_metadata": "/version/{version}",
    "metadata": "/version/{version}/table/{table_name}/metadata",
    "versions_metadata": "/metadata",
    "segmentation_metadata": "/table/{table_name}/segmentation_metadata",
}
# Served below the v2 prefix whatever the version: the v3 client keeps the v2 paths for
# these (reference 1.5 / QUIRK 6).
_mat_v2_paths_kept: dict[str, str] = {
    **_routes(
        _mat_v2_ds + "/version/{version}",
        {"table_count": "/table/{table_name}/count", "tables": "/tables"},
    ),
    **_routes(
        mat_v2_api + "/materialize/run",
        {
            "ingest_annotation_table": (
                "/ingest_annotations/datastack/{datastack_name}/{table_name}"
            ),
            "lookup_supervoxel_ids": "/lookup_svid/datastack/{datastack_name}/{table_name}",
        },
    ),
}

materialization_endpoints_v2: dict[str, str] = {
    **_routes(_mat_v2_ds, _mat_datastack_paths),
    **_mat_v2_paths_kept,
    "live_live_query": _mat_v3_ds + "/query",
}

materialization_endpoints_v3: dict[str, str] = {
    **_routes(
        _mat_v3_ds,
        {
            **_mat_datastack_paths,
            "all_tables_metadata": "/version/{version}/tables/metadata",
            "live_live_query": "/query",
            "get_views": "/version/{version}/views",
            "view_metadata": "/version/{version}/views/{view_name}/metadata",
            "view_query": "/version/{version}/views/{view_name}/query",
            "view_schema": "/version/{version}/views/{view_name}/schema",
            "view_schemas": "/version/{version}/views/schemas",
            "unique_string_values": "/table/{table_name}/unique_string_values",
            "neuroglancer_annotation_path": "/table/{table_name}/precomputed",
            "neuroglancer_segprop_path": "/version/{version}/table/{table_name}",
        },
    ),
    **_mat_v2_paths_kept,
}

materialization_api_versions: dict[int, dict[str, str]] = {
    2: materialization_endpoints_v2,
    3: materialization_endpoints_v3,
}

materialization_fallback_version = 2
"""API version used when the materialization server does not answer ``api/versions``."""

materialization_homepage = "{me_server_address}/materialize/views/datastack/{datastack_name}"

# ---------------------------------------------------------------------------------------------
# Info service (global server)
# ---------------------------------------------------------------------------------------------
infoservice_common: dict[str, str] = {
    "get_version": "{i_server_address}/info/version",
}

info_v1 = "{i_server_address}/info/api"
infoservice_endpoints_v1: dict[str, str] = _routes(
    info_v1, {"datasets": "/datasets", "dataset_info": "/dataset/{dataset_name}"}
)

info_v2 = "{i_server_address}/info/api/v2"
infoservice_endpoints_v2: dict[str, str] = _routes(
    info_v2,
    {
        "datastacks": "/datastacks",
        "datastack_info": "/datastack/full/{datastack_name}",
        "aligned_volumes": "/aligned_volume",
        "aligned_volume_info": "/aligned_volume/{aligned_volume_name}",
        "aligned_volume_by_id": "/aligned_volume/id/{aligned_volume_id}",
        "datastacks_from_aligned_volume": "/aligned_volume/{aligned_volume_name}/datastacks",
        "image_sources": "/datastack/{datastack_name}/image_sources",
    },
)

infoservice_api_versions: dict[int, dict[str, str]] = {
    1: infoservice_endpoints_v1,
    2: infoservice_endpoints_v2,
}

# ---------------------------------------------------------------------------------------------
# Auth (global server)
# ---------------------------------------------------------------------------------------------
auth_common: dict[str, str] = {}

v1_auth = "{auth_server_address}/auth/api/v1"
auth_endpoints_v1: dict[str, str] = {
    **_routes(
        v1_auth,
        {
            "refresh_token": "/refresh_token",
            "create_token": "/create_token",
            "get_tokens": "/user/token",
            "get_users": "/user",
            "get_group_users": "/group/{group_id}/user",
            "user_cache": "/user/cache",
            "service_table_dataset": "/service/{service_namespace}/table/{table_id}/dataset",
        },
    ),
    "user_tokens_page": "{auth_server_address}/sticky_auth/settings/tokens",
}

auth_api_versions: dict[int, dict[str, str]] = {1: auth_endpoints_v1}

# ---------------------------------------------------------------------------------------------
# Schema service (global server)
# ---------------------------------------------------------------------------------------------
schema_common: dict[str, str] = {
    "get_api_versions": "{emas_server_address}/schema/versions",
}

# Paths both API versions serve below their own prefix.
_schema_paths: dict[str, str] = {"schema": "/type", "schema_definition": "/type/{schema_type}"}

schema_v1 = "{emas_server_address}/schema"
schema_endpoints_v1: dict[str, str] = _routes(schema_v1, _schema_paths)

schema_v2 = "{emas_server_address}/schema/api/v2"
schema_endpoints_v2: dict[str, str] = _routes(
    schema_v2,
    {**_schema_paths, "schema_definition_multi": "/types", "schema_definition_all": "/types_all"},
)

schema_api_versions: dict[int, dict[str, str]] = {
    1: schema_endpoints_v1,
    2: schema_endpoints_v2,
}

# ---------------------------------------------------------------------------------------------
# PyChunkedGraph (local server)
# ---------------------------------------------------------------------------------------------
chunkedgraph_endpoints_common: dict[str, str] = {
    "get_api_versions": "{cg_server_address}/segmentation/api/versions",
    "get_version": "{cg_server_address}/segmentation/api/version",
    "info": "{cg_server_address}/segmentation/table/{table_id}/info",
}

pcg_legacy = "{cg_server_address}/segmentation/1.0"
chunkedgraph_endpoints_v0: dict[str, str] = {
    **_routes(
        pcg_legacy,
        {
            "handle_root": "/{table_id}/graph/root",
            "handle_children": "/segment/{node_id}/children",
            "leaves_from_root": "/{table_id}/segment/{root_id}/leaves",
            "merge_log": "/{table_id}/segment/{root_id}/merge_log",
            "change_log": "/{table_id}/segment/{root_id}/change_log",
            "contact_sites": "/{table_id}/segment/{root_id}/contact_sites",
        },
    ),
    "cloudvolume_path": "graphene://" + pcg_legacy + "/{table_id}",
}

pcg_v1 = "{cg_server_address}/segmentation/api/v1"
_pcg_t = pcg_v1 + "/table/{table_id}"
chunkedgraph_endpoints_v1: dict[str, str] = {
    **_routes(
        _pcg_t,
        {
            "handle_root": "/node/{supervoxel_id}/root",
            "handle_roots": "/roots",
            "get_roots": "/roots_binary",
            "handle_children": "/node/{node_id}/children",
            "leaves_many": "/node/leaves_many",
            "leaves_from_root": "/node/{root_id}/leaves",
            "minimal_covering_nodes": "/minimal_covering_nodes",
            "do_merge": "/merge",
            "execute_split": "/split",
            "preview_split": "/graph/split_preview",
            "undo": "/undo",
            "redo": "/redo",
            # PyChunkedGraph serves the per-root history routes under ``/root/``.
            "merge_log": "/root/{root_id}/merge_log",
            "change_log": "/root/{root_id}/change_log",
            "tabular_change_log": "/tabular_change_log_many",
            "handle_lineage_graph": "/lineage_graph_multiple",
            "past_id_mapping": "/past_id_mapping",
            "is_latest_roots": "/is_latest_roots",
            "root_timestamps": "/root_timestamps",
            "delta_roots": "/delta_roots",
            "valid_nodes": "/valid_nodes",
            "operation_details": "/operation_details",
            "user_operations": "/user_operations",
            "oldest_timestamp": "/oldest_timestamp",
            "find_path": "/graph/find_path",
            "lvl2_graph": "/node/{root_id}/lvl2_graph",
            "get_subgraph": "/node/{root_id}/subgraph",
            "contact_sites": "/node/{root_id}/contact_sites",
            "contact_sites_pairwise": "/contact_sites_pair/{root_id_1}/{root_id_2}",
        },
    ),
    "remesh_level2_chunks": "{cg_server_address}/meshing/api/v1/table/{table_id}/remeshing",
    "cloudvolume_path": "graphene://" + pcg_v1 + "/{table_id}",
}

chunkedgraph_api_versions: dict[int, dict[str, str]] = {
    0: chunkedgraph_endpoints_v0,
    1: chunkedgraph_endpoints_v1,
}

# ---------------------------------------------------------------------------------------------
# L2 cache (local server)
# ---------------------------------------------------------------------------------------------
l2cache_common: dict[str, str] = {}

l2cache_v1 = "{l2cache_server_address}/l2cache/api/v1"
l2cache_endpoints_v1: dict[str, str] = _routes(
    l2cache_v1,
    {
        "l2cache_data": "/table/{table_id}/attributes",
        "l2cache_meta": "/attribute_metadata",
        "l2cache_table_mapping": "/table_mapping",
    },
)

l2cache_api_versions: dict[int, dict[str, str]] = {1: l2cache_endpoints_v1}

# ---------------------------------------------------------------------------------------------
# JSON state service (global server) and Neuroglancer deployments
# ---------------------------------------------------------------------------------------------
jsonservice_common: dict[str, str] = {}

# Paths both API versions serve below their own prefix.
_state_paths: dict[str, str] = {
    "upload_state": "/post",
    "get_state": "/{state_id}",
    "get_state_raw": "/raw/{state_id}",
}

json_legacy = "{json_server_address}/nglstate"
jsonservice_endpoints_v0: dict[str, str] = _routes(json_legacy, _state_paths)

json_v1 = "{json_server_address}/nglstate/api/v1"
jsonservice_endpoints_v1: dict[str, str] = _routes(
    json_v1,
    {
        **_state_paths,
        "upload_state_w_id": "/post/{state_id}",
        "get_properties": "/property/{state_id}/info",
        "get_properties_raw": "/property/raw/{state_id}",
        "upload_properties": "/property/post",
        "upload_properties_w_id": "/property/post/{state_id}",
        "get_version": "/version",
    },
)

jsonservice_api_versions: dict[int, dict[str, str]] = {
    0: jsonservice_endpoints_v0,
    1: jsonservice_endpoints_v1,
}

ngl_endpoints_common: dict[str, str] = {
    "get_info": "{ngl_url}/version.json",
}

# ---------------------------------------------------------------------------------------------
# Skeleton service (local server; listed for completeness, no client here)
# ---------------------------------------------------------------------------------------------
skeletonservice_common: dict[str, str] = {
    "get_version": "{skeleton_server_address}/skeletoncache/api/version",
    "get_api_versions": "{skeleton_server_address}/skeletoncache/api/versions",
}

skeleton_v1 = "{skeleton_server_address}/skeletoncache/api/v1/{datastack_name}"
skeletonservice_endpoints_v1: dict[str, str] = _routes(
    skeleton_v1,
    {
        "skeleton_info": "/precomputed/skeleton/info",
        "skeleton_info_versioned": "/precomputed/skeleton/{skvn}/info",
        "get_skeleton_via_rid": "/precomputed/skeleton/{skvn}/{root_id}/{output_format}",
        "get_bulk_skeletons": (
            "/bulk/get_skeletons/{skvn}/{output_format}/{gen_missing_sks}/{root_ids}"
        ),
        "get_cached_skeletons_bulk": "/bulk/get_cached_skeletons/{skvn}/{output_format}",
        "skeletons_exist": "/precomputed/skeleton/exists",
        "gen_bulk_skeletons": "/bulk/gen_skeletons",
        "get_refusal_list": "/precomputed/skeleton/get_refusal_list",
        "get_skeleton_token": "/bulk/get_skeleton_token/{skvn}",
    },
)

skeletonservice_api_versions: dict[int, dict[str, str]] = {1: skeletonservice_endpoints_v1}
