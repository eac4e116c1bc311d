"""pytest plugin: the neurodata sandbox as fixtures ("moto for AIND and CAVE").

Registered through the ``pytest11`` entry point ``neurodata``, so installing
``prefect-neurodata[sandbox]`` makes the fixtures available in any test suite. Loading the plugin
imports only pytest and the standard library: a suite that requests none of the fixtures pays
nothing, starts nothing, and works without the ``sandbox`` extra. A test that requests a
fixture without the extra fails with the ``pip install`` line to run. Disable the plugin with
``-p no:neurodata``.

Fixtures (the sandbox is started once per session, part by part, only when a test needs it;
every process is stopped at the end of the session):

==================================  =========  ==================================================
fixture                             scope      what it gives
==================================  =========  ==================================================
``neurodata_sandbox_config``        session    the :class:`~.sandbox.SandboxConfig` (override it
                                               in a ``conftest.py`` to change the data)
``neurodata_sandbox``               session    the :class:`~.sandbox.NeurodataSandbox` handle:
                                               env, clients, blocks, ``faults()``, ``split()``,
                                               ``merge()``, ``materialize()``
``neurodata_cave_client``           function   our ``CAVEclient`` on the sandbox datastack
``neurodata_docdb_client``          function   our ``MetadataDbClient`` on the DocDB stand-in
``neurodata_cave_block``            function   name of a saved ``CaveCredentials`` block
``neurodata_docdb_block``           function   name of a saved ``DocDbApiCredentials`` block
``neurodata_aws_credentials_block`` function   name of a saved prefect-aws ``AwsCredentials``
                                               block for the S3/SQS/Secrets Manager/SSM stand-in
``neurodata_cave_env``              function   the CAVE URLs, datastack and tokens exported as
                                               environment variables for the test
``neurodata_aind_env``              function   the DocDB URL and ``AWS_*`` variables exported
                                               for the test (boto3 then talks to moto)
==================================  =========  ==================================================

Faults switched on with ``neurodata_sandbox.faults(...)`` are switched off after each test.
The block fixtures save into whatever Prefect API the test runs against: use them under
``prefect.testing.utilities.prefect_test_harness`` (a session-scoped autouse fixture in your
``conftest.py``).

Configuration, strongest first: a ``neurodata_sandbox_config`` fixture of your own; command-line
options (``--neurodata-seed``, ``--neurodata-records``, ``--neurodata-synapses``,
``--neurodata-neurons``, ``--neurodata-datastack``, ``--neurodata-workdir``); ini options of the
same names with ``_`` (``neurodata_seed = 7`` in ``[tool.pytest.ini_options]``); the defaults
of :class:`~.sandbox.SandboxConfig`.

Example:
    ```python
    def test_latest_version(neurodata_cave_client):
        assert neurodata_cave_client.materialize.most_recent_version() >= 1


    def test_survives_faults(neurodata_sandbox, neurodata_cave_client):
        neurodata_sandbox.faults("cave", rate=0.2, seed=7)  # off again after the test
        assert len(neurodata_cave_client.materialize.query_table("synapses")) > 0
    ```
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from prefect_neurodata.testing.sandbox import NeurodataSandbox, SandboxConfig

#: (option name, type, help). Each is ``--neurodata-<name>`` and ini ``neurodata_<name>``.
OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("seed", int, "seed of every random draw of the sandbox data"),
    ("records", int, "DocDB records to seed"),
    ("synapses", int, "rows of the CAVE synapses table"),
    ("neurons", int, "neurons of the CAVE chunkedgraph world"),
    ("datastack", str, "name of the CAVE datastack"),
    ("workdir", str, "reuse the sandbox running in this directory (neurodata sandbox up)"),
)
_SANDBOX_KEY = pytest.StashKey["NeurodataSandbox"]()
#: Fixtures that need each part; the session starts the parts its tests need in parallel.
PART_FIXTURES: dict[str, frozenset[str]] = {
    "cave": frozenset({"neurodata_cave_client", "neurodata_cave_block", "neurodata_cave_env"}),
    "aind": frozenset(
        {
            "neurodata_docdb_client",
            "neurodata_docdb_block",
            "neurodata_aws_credentials_block",
            "neurodata_aind_env",
        }
    ),
}
CAVE_BLOCK_NAME = "neurodata-sandbox-cave"
DOCDB_BLOCK_NAME = "neurodata-sandbox-docdb"
AWS_BLOCK_NAME = "neurodata-sandbox-aws"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--neurodata-*`` options and ``neurodata_*`` ini keys."""
    group = parser.getgroup("neurodata", "neurodata sandbox (prefect-neurodata)")
    for name, _kind, help_text in OPTIONS:
        group.addoption(
            f"--neurodata-{name}",
            dest=f"neurodata_{name}",
            default=None,
            help=help_text,
        )
        parser.addini(f"neurodata_{name}", help_text, default=None)


def pytest_configure(config: pytest.Config) -> None:
    """Check ``--neurodata-*`` / ``neurodata_*`` values at start-up (a usage error, not a test
    error); suites that set none of them import nothing here."""
    if any(_raw_option(config, name)[0] not in (None, "") for name, _k, _h in OPTIONS):
        config_from_options(config)


def _raw_option(config: pytest.Config, name: str) -> tuple[Any, str]:
    raw = config.getoption(f"neurodata_{name}")
    if raw is not None:
        return raw, f"--neurodata-{name}"
    return config.getini(f"neurodata_{name}"), f"ini option neurodata_{name}"


def config_from_options(pytestconfig: pytest.Config, **overrides: Any) -> SandboxConfig:
    """The :class:`~.sandbox.SandboxConfig` from command-line and ini options.

    Use it in your own ``neurodata_sandbox_config`` fixture to change some values and keep the
    command line working::

        @pytest.fixture(scope="session")
        def neurodata_sandbox_config(pytestconfig):
            return config_from_options(pytestconfig, synapses=10_000)

    Raises:
        pytest.UsageError: an option is not a valid value (the message names it).
    """
    from prefect_neurodata.testing.sandbox import SandboxConfig

    values: dict[str, Any] = {}
    for name, kind, _help in OPTIONS:
        raw, source = _raw_option(pytestconfig, name)
        if raw in (None, ""):
            continue
        try:
            values[name] = kind(raw)
        except ValueError:
            raise pytest.UsageError(f"{source} must be {kind.__name__}, got {raw!r}") from None
    values.update(overrides)
    try:
        return SandboxConfig(**values)
    except ValueError as exc:
        raise pytest.UsageError(f"neurodata sandbox configuration: {exc}") from None


@pytest.fixture(scope="session")
def neurodata_sandbox_config(pytestconfig: pytest.Config) -> SandboxConfig:
    """What the sandbox holds; override this fixture in a ``conftest.py`` to change it."""
    return config_from_options(pytestconfig)


@pytest.fixture(scope="session")
def neurodata_sandbox(
    request: pytest.FixtureRequest,
    neurodata_sandbox_config: SandboxConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NeurodataSandbox]:
    """The session's sandbox; parts start when first needed and stop at the session's end."""
    from prefect_neurodata.testing.sandbox import NeurodataSandbox, SandboxError

    handle = NeurodataSandbox(neurodata_sandbox_config, tmp_path_factory.mktemp("neurodata"))
    request.config.stash[_SANDBOX_KEY] = handle
    try:
        needed = _parts_needed(request.session.items)
        if needed:
            handle.start(*needed)
    except SandboxError as exc:
        handle.stop()
        pytest.fail(f"the neurodata sandbox did not start: {exc}", pytrace=False)
    try:
        yield handle
    finally:
        del request.config.stash[_SANDBOX_KEY]
        handle.stop()


def _parts_needed(items: list[pytest.Item]) -> list[Any]:
    names: set[str] = set()
    for item in items:
        names.update(getattr(item, "fixturenames", ()))
    return [part for part, fixtures in PART_FIXTURES.items() if names & fixtures]


def _part(sandbox: NeurodataSandbox, part: str) -> None:
    """Start a part for a fixture, failing the test (not erroring the suite) when it cannot."""
    from prefect_neurodata.testing.sandbox import SandboxError

    try:
        sandbox.start(part)  # type: ignore[arg-type]
    except SandboxError as exc:
        pytest.fail(f"the neurodata {part} sandbox did not start: {exc}", pytrace=False)


@pytest.fixture(autouse=True)
def _neurodata_reset_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """Switch off faults a test switched on (costs nothing when no sandbox runs)."""
    yield
    handle = request.config.stash.get(_SANDBOX_KEY, None)
    if handle is not None and handle.faulted:
        handle.reset_faults()


@pytest.fixture
def neurodata_cave_client(neurodata_sandbox: NeurodataSandbox) -> Any:
    """Our seed-compatible ``CAVEclient`` (view + edit token) on the sandbox datastack."""
    _part(neurodata_sandbox, "cave")
    return neurodata_sandbox.cave_client()


@pytest.fixture
def neurodata_docdb_client(neurodata_sandbox: NeurodataSandbox) -> Any:
    """Our seed-compatible ``MetadataDbClient`` (v1 records) on the DocDB stand-in."""
    _part(neurodata_sandbox, "aind")
    return neurodata_sandbox.docdb_client()


@pytest.fixture
def neurodata_cave_block(neurodata_sandbox: NeurodataSandbox) -> str:
    """Name of a saved ``CaveCredentials`` block on the sandbox (needs a Prefect API)."""
    return _saved(neurodata_sandbox, "cave", "cave_block", CAVE_BLOCK_NAME)


@pytest.fixture
def neurodata_docdb_block(neurodata_sandbox: NeurodataSandbox) -> str:
    """Name of a saved ``DocDbApiCredentials`` block on the sandbox (needs a Prefect API)."""
    return _saved(neurodata_sandbox, "aind", "docdb_block", DOCDB_BLOCK_NAME)


@pytest.fixture
def neurodata_aws_credentials_block(neurodata_sandbox: NeurodataSandbox) -> str:
    """Name of a saved prefect-aws ``AwsCredentials`` block for the moto stand-in."""
    return _saved(neurodata_sandbox, "aind", "aws_credentials", AWS_BLOCK_NAME)


def _saved(sandbox: NeurodataSandbox, part: str, build: str, name: str) -> str:
    """Save the block ``sandbox.<build>()`` under ``name`` (overwriting); returns the name."""
    _part(sandbox, part)
    getattr(sandbox, build)().save(name, overwrite=True)
    return name


@pytest.fixture
def neurodata_cave_env(
    neurodata_sandbox: NeurodataSandbox, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The CAVE part's ``NEURODATA_CAVE_*`` variables, exported for the test."""
    _part(neurodata_sandbox, "cave")
    return _export(neurodata_sandbox.cave_env, monkeypatch)


@pytest.fixture
def neurodata_aind_env(
    neurodata_sandbox: NeurodataSandbox, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The AIND part's variables (DocDB URL, bucket, ``AWS_*`` for moto), exported for the test."""
    _part(neurodata_sandbox, "aind")
    return _export(neurodata_sandbox.aind_env, monkeypatch)


def _export(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # A profile's endpoint or credentials file must not win over the exported test values.
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        if key in os.environ and key not in env:
            monkeypatch.delenv(key)
    return env
