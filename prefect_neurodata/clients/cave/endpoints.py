"""Every URL template the CAVE clients use, for every service.

Templates are plain ``str.format`` strings. Each service has a *common* dict (version probes that
exist whatever the API version) and one dict per API version; a client merges the common dict
with the dict of the version it negotiated (see `base._api_endpoints`) and formats a template
with its ``default_url_mapping`` (``{<server key>: <server address>, ...}``) plus call-specific
keys such as ``table_id`` or ``datastack_name``.

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

default_global_server_address = "https://global.daf-apis.com"
"""The global server (info, auth, schema, state) used when none is given or cached."""

fallback_ngl_url = "https://neuroglancer.neuvue.io/"
"""Neuroglancer deployment used when neither the call, the client nor the datastack names one."""

# ---------------------------------------------------------------------------------------------
# Annotation engine (local server; URLs keyed by aligned volume)
# ---------------------------------------------------------------------------------------------
annotation_common: dict[str, str] = {}

anno_legacy = "{ae_server_address}/annotation"
annotation_endpoints_legacy: dict[str, str] = {
    "datasets": anno_legacy + "/datasets",
    "table_names": anno_legacy + "/dataset/{dataset_name}",
    "existing_annotation": anno_legacy + "/dataset/{dataset_name}/{table_name}/{annotation_id}",
    "new_annotation": anno_legacy + "/dataset/{dataset_name}/{table_name}",
}

anno_v2 = "{ae_server_address}/annotation/api/v2"
annotation_endpoints_v2: dict[str, str] = {
    "tables": anno_v2 + "/aligned_volume/{aligned_volume_name}/table",
    "table_info": anno_v2 + "/aligned_volume/{aligned_volume_name}/table/{table_name}",
    "annotations": anno_v2 + "/aligned_volume/{aligned_volume_name}/table/{table_name}/annotations",
    "table_count": anno_v2 + "/aligned_volume/{aligned_volume_name}/table/{table_name}/count",
}

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

materialization_endpoints_v2: dict[str, str] = {
    "simple_query": _mat_v2_ds + "/version/{version}/table/{table_name}/query",
    "join_query": _mat_v2_ds + "/version/{version}/query",
    "table_count": _mat_v2_ds + "/version/{version}/table/{table_name}/count",
    "versions": _mat_v2_ds + "/versions",
    "version_metadata": _mat_v2_ds + "/version/{version}",
    "tables": _mat_v2_ds + "/version/{version}/tables",
    "metadata": _mat_v2_ds + "/version/{version}/table/{table_name}/metadata",
    "versions_metadata": _mat_v2_ds + "/metadata",
    "segmentation_metadata": _mat_v2_ds + "/table/{table_name}/segmentation_metadata",
    "ingest_annotation_table": mat_v2_api
    + "/materialize/run/ingest_annotations/datastack/{datastack_name}/{table_name}",
    "lookup_supervoxel_ids": mat_v2_api
    + "/materialize/run/lookup_svid/datastack/{datastack_name}/{table_name}",
    "live_live_query": mat_v3_api + "/datastack/{datastack_name}/query",
}

materialization_endpoints_v3: dict[str, str] = {
    "simple_query": _mat_v3_ds + "/version/{version}/table/{table_name}/query",
    "join_query": _mat_v3_ds + "/version/{version}/query",
    # The v3 client keeps the v2 paths for these two (reference 1.5 / QUIRK 6).
    "table_count": _mat_v2_ds + "/version/{version}/table/{table_name}/count",
    "tables": _mat_v2_ds + "/version/{version}/tables",
    "versions": _mat_v3_ds + "/versions",
    "version_metadata": _mat_v3_ds + "/version/{version}",
    "metadata": _mat_v3_ds + "/version/{version}/table/{table_name}/metadata",
    "all_tables_metadata": _mat_v3_ds + "/version/{version}/tables/metadata",
    "versions_metadata": _mat_v3_ds + "/metadata",
    "segmentation_metadata": _mat_v3_ds + "/table/{table_name}/segmentation_metadata",
    "ingest_annotation_table": mat_v2_api
    + "/materialize/run/ingest_annotations/datastack/{datastack_name}/{table_name}",
    "lookup_supervoxel_ids": mat_v2_api
    + "/materialize/run/lookup_svid/datastack/{datastack_name}/{table_name}",
    "live_live_query": _mat_v3_ds + "/query",
    "get_views": _mat_v3_ds + "/version/{version}/views",
    "view_metadata": _mat_v3_ds + "/version/{version}/views/{view_name}/metadata",
    "view_query": _mat_v3_ds + "/version/{version}/views/{view_name}/query",
    "view_schema": _mat_v3_ds + "/version/{version}/views/{view_name}/schema",
    "view_schemas": _mat_v3_ds + "/version/{version}/views/schemas",
    "unique_string_values": _mat_v3_ds + "/table/{table_name}/unique_string_values",
    "neuroglancer_annotation_path": _mat_v3_ds + "/table/{table_name}/precomputed",
    "neuroglancer_segprop_path": _mat_v3_ds + "/version/{version}/table/{table_name}",
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
infoservice_endpoints_v1: dict[str, str] = {
    "datasets": info_v1 + "/datasets",
    "dataset_info": info_v1 + "/dataset/{dataset_name}",
}

info_v2 = "{i_server_address}/info/api/v2"
infoservice_endpoints_v2: dict[str, str] = {
    "datastacks": info_v2 + "/datastacks",
    "datastack_info": info_v2 + "/datastack/full/{datastack_name}",
    "aligned_volumes": info_v2 + "/aligned_volume",
    "aligned_volume_info": info_v2 + "/aligned_volume/{aligned_volume_name}",
    "aligned_volume_by_id": info_v2 + "/aligned_volume/id/{aligned_volume_id}",
    "datastacks_from_aligned_volume": info_v2 + "/aligned_volume/{aligned_volume_name}/datastacks",
    "image_sources": info_v2 + "/datastack/{datastack_name}/image_sources",
}

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
    "refresh_token": v1_auth + "/refresh_token",
    "create_token": v1_auth + "/create_token",
    "get_tokens": v1_auth + "/user/token",
    "get_users": v1_auth + "/user",
    "get_group_users": v1_auth + "/group/{group_id}/user",
    "user_tokens_page": "{auth_server_address}/sticky_auth/settings/tokens",
    "user_cache": v1_auth + "/user/cache",
    "service_table_dataset": v1_auth + "/service/{service_namespace}/table/{table_id}/dataset",
}

auth_api_versions: dict[int, dict[str, str]] = {1: auth_endpoints_v1}

# ---------------------------------------------------------------------------------------------
# Schema service (global server)
# ---------------------------------------------------------------------------------------------
schema_common: dict[str, str] = {
    "get_api_versions": "{emas_server_address}/schema/versions",
}

schema_v1 = "{emas_server_address}/schema"
schema_endpoints_v1: dict[str, str] = {
    "schema": schema_v1 + "/type",
    "schema_definition": schema_v1 + "/type/{schema_type}",
}

schema_v2 = "{emas_server_address}/schema/api/v2"
schema_endpoints_v2: dict[str, str] = {
    "schema": schema_v2 + "/type",
    "schema_definition": schema_v2 + "/type/{schema_type}",
    "schema_definition_multi": schema_v2 + "/types",
    "schema_definition_all": schema_v2 + "/types_all",
}

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
    "handle_root": pcg_legacy + "/{table_id}/graph/root",
    "handle_children": pcg_legacy + "/segment/{node_id}/children",
    "leaves_from_root": pcg_legacy + "/{table_id}/segment/{root_id}/leaves",
    "merge_log": pcg_legacy + "/{table_id}/segment/{root_id}/merge_log",
    "change_log": pcg_legacy + "/{table_id}/segment/{root_id}/change_log",
    "contact_sites": pcg_legacy + "/{table_id}/segment/{root_id}/contact_sites",
    "cloudvolume_path": "graphene://" + pcg_legacy + "/{table_id}",
}

pcg_v1 = "{cg_server_address}/segmentation/api/v1"
_pcg_t = pcg_v1 + "/table/{table_id}"
chunkedgraph_endpoints_v1: dict[str, str] = {
    "handle_root": _pcg_t + "/node/{supervoxel_id}/root",
    "handle_roots": _pcg_t + "/roots",
    "get_roots": _pcg_t + "/roots_binary",
    "handle_children": _pcg_t + "/node/{node_id}/children",
    "leaves_many": _pcg_t + "/node/leaves_many",
    "leaves_from_root": _pcg_t + "/node/{root_id}/leaves",
    "minimal_covering_nodes": _pcg_t + "/minimal_covering_nodes",
    "do_merge": _pcg_t + "/merge",
    "execute_split": _pcg_t + "/split",
    "preview_split": _pcg_t + "/graph/split_preview",
    "undo": _pcg_t + "/undo",
    "redo": _pcg_t + "/redo",
    # PyChunkedGraph serves the per-root history routes under ``/root/``.
    "merge_log": _pcg_t + "/root/{root_id}/merge_log",
    "change_log": _pcg_t + "/root/{root_id}/change_log",
    "tabular_change_log": _pcg_t + "/tabular_change_log_many",
    "handle_lineage_graph": _pcg_t + "/lineage_graph_multiple",
    "past_id_mapping": _pcg_t + "/past_id_mapping",
    "is_latest_roots": _pcg_t + "/is_latest_roots",
    "root_timestamps": _pcg_t + "/root_timestamps",
    "delta_roots": _pcg_t + "/delta_roots",
    "valid_nodes": _pcg_t + "/valid_nodes",
    "operation_details": _pcg_t + "/operation_details",
    "user_operations": _pcg_t + "/user_operations",
    "oldest_timestamp": _pcg_t + "/oldest_timestamp",
    "find_path": _pcg_t + "/graph/find_path",
    "lvl2_graph": _pcg_t + "/node/{root_id}/lvl2_graph",
    "get_subgraph": _pcg_t + "/node/{root_id}/subgraph",
    "contact_sites": _pcg_t + "/node/{root_id}/contact_sites",
    "contact_sites_pairwise": _pcg_t + "/contact_sites_pair/{root_id_1}/{root_id_2}",
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
l2cache_endpoints_v1: dict[str, str] = {
    "l2cache_data": l2cache_v1 + "/table/{table_id}/attributes",
    "l2cache_meta": l2cache_v1 + "/attribute_metadata",
    "l2cache_table_mapping": l2cache_v1 + "/table_mapping",
}

l2cache_api_versions: dict[int, dict[str, str]] = {1: l2cache_endpoints_v1}

# ---------------------------------------------------------------------------------------------
# JSON state service (global server) and Neuroglancer deployments
# ---------------------------------------------------------------------------------------------
jsonservice_common: dict[str, str] = {}

json_legacy = "{json_server_address}/nglstate"
jsonservice_endpoints_v0: dict[str, str] = {
    "upload_state": json_legacy + "/post",
    "get_state": json_legacy + "/{state_id}",
    "get_state_raw": json_legacy + "/raw/{state_id}",
}

json_v1 = "{json_server_address}/nglstate/api/v1"
jsonservice_endpoints_v1: dict[str, str] = {
    "upload_state": json_v1 + "/post",
    "upload_state_w_id": json_v1 + "/post/{state_id}",
    "get_state": json_v1 + "/{state_id}",
    "get_state_raw": json_v1 + "/raw/{state_id}",
    "get_properties": json_v1 + "/property/{state_id}/info",
    "get_properties_raw": json_v1 + "/property/raw/{state_id}",
    "upload_properties": json_v1 + "/property/post",
    "upload_properties_w_id": json_v1 + "/property/post/{state_id}",
    "get_version": json_v1 + "/version",
}

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
skeletonservice_endpoints_v1: dict[str, str] = {
    "skeleton_info": skeleton_v1 + "/precomputed/skeleton/info",
    "skeleton_info_versioned": skeleton_v1 + "/precomputed/skeleton/{skvn}/info",
    "get_skeleton_via_rid": skeleton_v1 + "/precomputed/skeleton/{skvn}/{root_id}/{output_format}",
    "get_bulk_skeletons": skeleton_v1
    + "/bulk/get_skeletons/{skvn}/{output_format}/{gen_missing_sks}/{root_ids}",
    "get_cached_skeletons_bulk": skeleton_v1 + "/bulk/get_cached_skeletons/{skvn}/{output_format}",
    "skeletons_exist": skeleton_v1 + "/precomputed/skeleton/exists",
    "gen_bulk_skeletons": skeleton_v1 + "/bulk/gen_skeletons",
    "get_refusal_list": skeleton_v1 + "/precomputed/skeleton/get_refusal_list",
    "get_skeleton_token": skeleton_v1 + "/bulk/get_skeleton_token/{skvn}",
}

skeletonservice_api_versions: dict[int, dict[str, str]] = {1: skeletonservice_endpoints_v1}
