"""The base of every credential block here: unknown fields are an error, not silently dropped.

Prefect's `Block` accepts and ignores unknown keyword arguments (``extra="allow"``), so a typo
such as ``CaveCredentials(datastack="minnie65_public")`` (the field is ``datastack_name``) saved
a block without the setting and the first run failed far away from the mistake. Blocks here
reject such keys at construction with a message that names them and the closest real field.

The keys Prefect itself stores beside a block's fields in a saved document
(:data:`PREFECT_BLOCK_KEYS`) are accepted, so save/load round trips keep working.

Example:
    ```python
    from prefect_neurodata.blocks import CaveCredentials

    try:
        CaveCredentials(datastack="minnie65_public")
    except ValueError as error:
        print(error)  # ... unknown field 'datastack' (did you mean 'datastack_name'?) ...
    ```
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any

from prefect.blocks.abstract import CredentialsBlock
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, model_validator

PREFECT_BLOCK_KEYS = frozenset(
    {"block_type_slug", "_block_document_id", "_block_document_name", "_is_anonymous"}
)
"""Keys Prefect writes into (or passes with) a block document's data besides the fields."""


def unknown_field_message(block_name: str, unknown: list[str], known: list[str]) -> str:
    """The error for ``unknown`` keys given to ``block_name``: names them and suggests fields."""
    described = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        if not close:
            close = [name for name in known if key in name or name in key][:1]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        described.append(f"{key!r}{hint}")
    noun = "field" if len(unknown) == 1 else "fields"
    return (
        f"{block_name} got unknown {noun} {', '.join(described)}; "
        f"its fields are: {', '.join(known)}"
    )


def _service_url(value: str, info: ValidationInfo) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("https://", "http://")):
        raise ValueError(
            f"{info.field_name} must include the scheme (https:// or http://), got {value!r}"
        )
    return value


ServiceUrl = Annotated[str, AfterValidator(_service_url)]
"""A service's base URL as a block field: the scheme is required (``http://`` is allowed for
loopback stand-ins) and a trailing ``/`` is dropped; the error names the field."""


class NeurodataCredentialsBlock(CredentialsBlock):
    """A `CredentialsBlock` that rejects keyword arguments which are not its fields.

    Validation errors never echo the input: a mistyped secret field's value would otherwise
    appear in the error message.
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        known: list[str] = []
        for name, info in cls.model_fields.items():
            known.append(name)
            if info.alias:
                known.append(info.alias)
        unknown = sorted(
            key for key in values if key not in known and key not in PREFECT_BLOCK_KEYS
        )
        if unknown:
            raise ValueError(unknown_field_message(cls.__name__, unknown, list(cls.model_fields)))
        return values


# The Allen Institute for Neural Dynamics' own GitHub avatar (not the AWS logo prefect-aws uses).
AIND_LOGO_URL = "https://github.com/AllenNeuralDynamics.png"
AIND_DOCS_URL = "https://aind-data-access-api.readthedocs.io/en/latest/"


class AindCredentialsBlock(NeurodataCredentialsBlock):
    """Base of the AIND blocks (DocDB API, DocumentDB over SSH, RDS): their logo and docs link."""

    _logo_url = AIND_LOGO_URL  # type: ignore[assignment]  # Prefect types it HttpUrl; its own blocks assign str
    _documentation_url = AIND_DOCS_URL  # type: ignore[assignment]  # Prefect types it HttpUrl; its own blocks assign str

    def _values_for(self, credentials: type[BaseModel]) -> dict[str, Any]:
        """This block's values of the fields a client credentials model shares with it.

        The AIND database blocks name their fields as the seed's credentials models do, so the
        client gets every setting the block holds and its own defaults for the rest.
        """
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name in credentials.model_fields
        }
