"""The config reference page is generated from the dataclasses and kept in sync."""

from __future__ import annotations

import dataclasses

from experiments.studies.config_docs import DOC, SECTIONS, field_docs, render


def test_docs_config_md_is_up_to_date() -> None:
    assert DOC.read_text() == render(), "run: python -m experiments.studies.config_docs"


def test_every_field_is_documented() -> None:
    for _, cls in SECTIONS:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no one-line doc"
