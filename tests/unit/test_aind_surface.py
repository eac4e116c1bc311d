"""Every public name, argument and default of the seed's ``aind_data_access_api`` surface exists.

Transcribed from the seed's API docs (shared/seeds/aind_data_access_api.txt).
Extra parameters are allowed only when keyword-only or defaulted, so seed calls keep working.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

R = inspect.Parameter.empty  # marks a required parameter

# module -> callable path -> [(parameter, default or R), ...] in positional order
CALLABLES: dict[str, dict[str, list[tuple[str, Any]]]] = {
    "credentials": {
        "AWSConfigSettingsSource": [("settings_cls", R), ("config_file_location", R)],
        "JsonConfigSettingsSource": [("settings_cls", R), ("config_file_location", R)],
        "JsonConfigSettingsSource.get_field_value": [("field", R), ("field_name", R)],
        "JsonConfigSettingsSource.prepare_field_value": [
            ("field_name", R), ("field", R), ("value", R), ("value_is_complex", R)
        ],
        "CoreCredentials.settings_customise_sources": [
            ("settings_cls", R), ("init_settings", R), ("env_settings", R),
            ("dotenv_settings", R), ("file_secret_settings", R),
        ],
    },
    "document_db": {
        "Client": [("host", R), ("database", R), ("collection", R), ("version", "v1"),
                   ("boto", None), ("session", None)],
        "MetadataDbClient": [("host", R), ("database", "metadata_index"),
                             ("collection", "data_assets"), ("version", "v1"), ("boto", None),
                             ("session", None)],
        "SchemaDbClient": [("host", R), ("collection", R), ("database", "schemas"),
                           ("version", "v1"), ("boto", None), ("session", None)],
        "AnalysisDbClient": [("host", R), ("collection", R), ("database", "analysis"),
                             ("version", "v1"), ("boto", None), ("session", None)],
        "Client.aggregate_docdb_records": [("pipeline", R)],
        "Client.close": [],
        "Client.delete_many_records": [("data_asset_record_ids", R)],
        "Client.delete_one_record": [("data_asset_record_id", R)],
        "Client.fetch_records_by_filter_list": [("filter_key", R), ("filter_values", R),
                                                ("projection", None)],
        "Client.insert_one_docdb_record": [("record", R)],
        "Client.retrieve_docdb_records": [
            ("filter_query", None), ("projection", None), ("sort", None), ("limit", 0),
            ("paginate", None), ("paginate_batch_size", None), ("paginate_max_iterations", None),
        ],
        "Client.upsert_list_of_docdb_records": [("records", R), ("max_payload_size", 5e6)],
        "Client.upsert_one_docdb_record": [("record", R)],
        "MetadataDbClient.add_qc_evaluation": [("data_asset_id", R), ("qc_contents", R)],
        "MetadataDbClient.deregister_asset": [("s3_location", R)],
        "MetadataDbClient.generate_data_summary": [("record_id", R)],
        "MetadataDbClient.register_asset": [("s3_location", R)],
        "MetadataDbClient.register_co_result": [("s3_location", R), ("name", R),
                                                ("co_asset_id", R), ("co_computation_id", R)],
        "SchemaDbClient.retrieve_schema_records": [("schema_version", None), ("projection", None),
                                                   ("sort", None), ("limit", 0)],
    },
    "document_db_ssh": {
        "DocumentDbSSHClient": [("credentials", R)],
        "DocumentDbSSHClient.close": [],
        "DocumentDbSSHClient.start": [],
        "DocumentDbSSHCredentials.from_secrets_manager": [("doc_db_secret_name", R),
                                                         ("ssh_secret_name", R)],
    },
    "rds_tables": {
        "Client": [("credentials", R), ("drivername", "postgresql")],
        "Client.append_df_to_table": [("df", R), ("table_name", R), ("dtype", None)],
        "Client.execute_query": [("query", R)],
        "Client.overwrite_table_with_df": [("df", R), ("table_name", R), ("dtype", None)],
        "Client.read_table": [("table_name", R), ("where_clause", None)],
        "RDSCredentials.validate_database_name": [],
    },
    "secrets": {
        "get_parameter": [("parameter_name", R), ("with_decryption", False)],
        "get_secret": [("secret_name", R)],
    },
    "utils": {
        "build_docdb_location_to_id_map": [("docdb_api_client", R), ("bucket", R),
                                           ("prefixes", R)],
        "does_metadata_record_exist_in_docdb": [("docdb_api_client", R), ("bucket", R),
                                                ("prefix", R)],
        "fetch_records_by_filter_list": [("docdb_api_client", R), ("filter_key", R),
                                         ("filter_values", R), ("projection", None)],
        "get_record_from_docdb": [("docdb_api_client", R), ("record_id", R)],
        "get_s3_bucket_and_prefix": [("s3_location", R)],
        "get_s3_location": [("bucket", R), ("prefix", R)],
        "paginate_docdb": [("docdb_api_client", R), ("page_size", 500), ("filter_query", None),
                           ("projection", None)],
    },
}  # fmt: skip

PROPERTIES = {
    "document_db": ["Client.boto", "Client.session"],
    "document_db_ssh": ["DocumentDbSSHClient.collection"],
}

# settings class -> (env_prefix, extra, {field: default or R})
SETTINGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "credentials.CoreCredentials": ("", "forbid", {
        "aws_secrets_name": None, "username": R, "password": R, "host": R, "port": R,
        "database": None,
    }),
    "rds_tables.RDSCredentials": ("RDS_", "forbid", {
        "aws_secrets_name": None, "username": R, "password": R, "host": R, "port": 5432,
        "database": None, "dbname": None,
    }),
    "document_db_ssh.DocumentDbSSHCredentials": ("DOC_DB_", "ignore", {
        "aws_secrets_name": None, "username": R, "password": R, "host": R, "port": 27017,
        "database": "metadata_index", "collection": "data_assets",
        "ssh_local_bind_address": "localhost", "ssh_host": R, "ssh_port": 22,
        "ssh_username": R, "ssh_password": None,  # seed: required; optional here (key auth)
    }),
}  # fmt: skip

BASES = {
    "document_db.MetadataDbClient": "document_db.Client",
    "document_db.SchemaDbClient": "document_db.Client",
    "document_db.AnalysisDbClient": "document_db.Client",
    "credentials.AWSConfigSettingsSource": "credentials.JsonConfigSettingsSource",
    "rds_tables.RDSCredentials": "credentials.CoreCredentials",
    "document_db_ssh.DocumentDbSSHCredentials": "credentials.CoreCredentials",
}


def resolve(module: str, path: str) -> Any:
    obj: Any = importlib.import_module(f"prefect_neurodata.clients.aind.{module}")
    for part in path.split("."):
        obj = inspect.getattr_static(obj, part) if inspect.isclass(obj) else getattr(obj, part)
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    return obj


CASES = [(m, p, params) for m, entries in CALLABLES.items() for p, params in entries.items()]


@pytest.mark.parametrize(
    ("module", "path", "expected"), CASES, ids=[f"{m}.{p}" for m, p, _ in CASES]
)
def test_signature_matches_seed(module: str, path: str, expected: list[tuple[str, Any]]):
    obj = resolve(module, path)
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = list(inspect.signature(target).parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    got = [(p.name, p.default) for p in positional[: len(expected)]]
    assert got == expected
    for extra in positional[len(expected) :]:
        assert extra.default is not R, f"extra positional parameter {extra.name} needs a default"
    for extra in params:
        if extra.kind is extra.KEYWORD_ONLY:
            assert extra.default is not R, f"keyword-only {extra.name} needs a default"


@pytest.mark.parametrize(("module", "path"), [(m, p) for m, ps in PROPERTIES.items() for p in ps])
def test_properties_exist(module: str, path: str):
    assert isinstance(resolve(module, path), property)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_settings_fields_and_config(name: str):
    module, cls_name = name.split(".")
    cls = resolve(module, cls_name)
    env_prefix, extra, fields = SETTINGS[name]
    assert cls.model_config["env_prefix"] == env_prefix
    assert cls.model_config["extra"] == extra
    for field, default in fields.items():
        info = cls.model_fields[field]
        if default is R:
            assert info.is_required(), field
        else:
            assert info.default == default, field
    assert cls.model_fields["password"].annotation.__name__ == "SecretStr"


@pytest.mark.parametrize(("child", "parent"), list(BASES.items()))
def test_class_hierarchy(child: str, parent: str):
    assert issubclass(resolve(*child.split(".")), resolve(*parent.split(".")))
