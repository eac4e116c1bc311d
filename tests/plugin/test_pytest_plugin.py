"""The sandbox pytest plugin as a user's suite sees it: registered, inert, configurable, real.

Each test runs a small suite with pytest's ``pytester`` in a fresh pytest process, so the
plugin is loaded from its ``pytest11`` entry point exactly as in a user's project.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from prefect_neurodata.sandbox.processes import ServiceProcess, is_same_process
from prefect_neurodata.testing import SandboxConfig
from prefect_neurodata.testing.pytest_plugin import config_from_options

PLUGIN = "prefect_neurodata.testing.pytest_plugin"


def test_plugin_is_registered_through_the_pytest11_entry_point(
    pytestconfig: pytest.Config,
) -> None:
    points = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "neurodata"]
    assert [e.value for e in points] == [PLUGIN]
    assert pytestconfig.pluginmanager.has_plugin("neurodata")


def test_a_suite_without_the_fixtures_imports_and_starts_nothing(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_plain(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("neurodata")
            heavy = ("prefect", "prefect_neurodata.testing.sandbox", "requests")
            heavy = [m for m in heavy if m in sys.modules]
            assert heavy == []
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_without_the_sandbox_extra_a_fixture_fails_with_the_install_line(
    pytester: pytest.Pytester,
) -> None:
    # A conftest that hides uvicorn (part of the extra) the way an absent package is seen.
    pytester.makeconftest("import sys\nsys.modules['uvicorn'] = None\n")
    pytester.makepyfile(
        """
        def test_needs_cave(neurodata_cave_client):
            pass

        def test_unrelated():
            assert 1 + 1 == 2
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.re_match_lines(
        [r".*pip install 'prefect-neurodata\[sandbox\]'.*missing modules: \['uvicorn'\]"]
    )


def test_command_line_and_ini_options_reach_the_config(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nneurodata_seed = 5\nneurodata_synapses = 999\n")
    pytester.makepyfile(
        """
        def test_config(neurodata_sandbox_config):
            c = neurodata_sandbox_config
            assert (c.seed, c.synapses, c.datastack, c.records) == (5, 123, "lab_stack", 40)
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--neurodata-synapses=123", "--neurodata-datastack=lab_stack"
    )
    result.assert_outcomes(passed=1)


def test_a_bad_option_is_a_usage_error_naming_field_and_value(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_config(neurodata_sandbox_config):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--neurodata-synapses=-4")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*synapses must be an integer >= 0, got -4*"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--neurodata-seed=abc")
    result.stderr.fnmatch_lines(["*--neurodata-seed must be int, got 'abc'*"])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("records", -1, "records must be an integer >= 0, got -1"),
        ("neurons", 1, r"neurons must be an integer in \[2, 5000\], got 1"),
        ("datastack", "Bad-Name", "datastack must be lower-case .*got 'Bad-Name'"),
        ("s3_assets", 99, r"s3_assets must be <= records \(40\), got 99"),
    ],
)
def test_sandbox_config_names_the_bad_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SandboxConfig(**{field: value})


def test_config_from_options_keeps_overrides(pytestconfig: pytest.Config) -> None:
    assert config_from_options(pytestconfig, synapses=77).synapses == 77


@pytest.mark.integration
def test_both_parts_serve_clients_faults_reset_and_nothing_is_left_running(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    record = tmp_path / "processes.json"
    pytester.makeconftest(
        f"""
        import json
        import pytest

        @pytest.fixture(scope="session", autouse=True)
        def record_processes(neurodata_sandbox):
            yield
            procs = {{}}
            for part, sb in neurodata_sandbox._parts.items():
                procs.update(json.loads(sb.state_path.read_text())["processes"])
            with open({str(record)!r}, "w") as fh:
                json.dump(procs, fh)
        """
    )
    pytester.makepyfile(
        """
        import boto3
        import pytest
        import requests

        def test_docdb_records(neurodata_docdb_client, neurodata_sandbox_config):
            ids = neurodata_docdb_client.retrieve_docdb_records(
                filter_query={}, projection={"_id": 1}
            )
            assert len(ids) == neurodata_sandbox_config.records // 2  # half are v1

        def test_s3_through_the_exported_environment(neurodata_aind_env):
            s3 = boto3.client("s3")  # endpoint and keys come from the exported AWS_* variables
            listing = s3.list_objects_v2(Bucket=neurodata_aind_env["NEURODATA_S3_BUCKET"])
            assert listing["KeyCount"] > 0

        def test_cave_datastack_from_the_option(neurodata_cave_client):
            assert neurodata_cave_client.datastack_name == "lab_stack"
            assert neurodata_cave_client.materialize.most_recent_version() == 3

        def test_faults_on(neurodata_sandbox, neurodata_docdb_client):
            neurodata_sandbox.faults("docdb", rate=1.0, statuses=[500], seed=1)
            with pytest.raises(requests.HTTPError):
                neurodata_docdb_client.retrieve_docdb_records(filter_query={}, limit=1)

        def test_faults_are_off_again(neurodata_sandbox, neurodata_docdb_client):
            assert neurodata_sandbox.faulted == ()
            one = neurodata_docdb_client.retrieve_docdb_records(filter_query={}, limit=1)
            assert len(one) == 1

        def test_a_new_version_after_a_merge(neurodata_sandbox, neurodata_cave_client):
            syn = neurodata_cave_client.materialize.query_table("synapses", limit=200)
            row = syn[syn["pre_pt_root_id"] != syn["post_pt_root_id"]].iloc[0]
            pre, post = row["pre_pt_supervoxel_id"], row["post_pt_supervoxel_id"]
            merged = neurodata_sandbox.merge(pre, post)
            version = neurodata_sandbox.materialize()
            assert version == 4
            roots = neurodata_cave_client.chunkedgraph.get_roots([pre, post])
            assert [int(r) for r in roots] == [merged, merged]
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--neurodata-datastack=lab_stack", timeout=600
    )
    result.assert_outcomes(passed=6)
    procs = json.loads(record.read_text())
    assert sorted(procs) == ["aws", "cave", "docdb", "mongo"]
    alive = [n for n, p in procs.items() if is_same_process(ServiceProcess(**p))]
    assert alive == []
