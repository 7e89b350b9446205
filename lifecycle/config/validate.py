"""conf/validate.yaml: the Great Expectations thresholds; the pipeline stops when one is not met."""

from __future__ import annotations

from pydantic import Field

from lifecycle.config.base import Section


class ValidateConfig(Section):
    min_documents: int = Field(ge=1)
    min_characters: int = Field(ge=1)
    min_doc_chars: int = Field(ge=1)
    max_doc_chars: int = Field(ge=1)
    length_mostly: float = Field(gt=0, le=1)
    min_printable_share: float = Field(ge=0, le=1)
    printable_mostly: float = Field(gt=0, le=1)
    max_duplicate_share: float = Field(ge=0, le=1)  # share of input documents removed as (near-)duplicates
    required_columns: list[str]
