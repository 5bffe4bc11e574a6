"""Cases: analysed fields reviewed and signed off by a person, kept with an audit trail (:mod:`.store`),
exported as training data for ``wbc adapt`` (:mod:`.export`) and reported (:mod:`.report`)."""

from wbc.cases.store import (
    DEFAULT_STORE,
    NOT_WBC,
    SPECIAL_LABELS,
    UNIDENTIFIABLE,
    CaseAmbiguousError,
    CaseError,
    CaseNotFoundError,
    CaseSignedError,
    CaseStore,
    CaseSummary,
    create_case_from_fields,
    crops_for,
)

__all__ = [
    "DEFAULT_STORE",
    "NOT_WBC",
    "SPECIAL_LABELS",
    "UNIDENTIFIABLE",
    "CaseAmbiguousError",
    "CaseError",
    "CaseNotFoundError",
    "CaseSignedError",
    "CaseStore",
    "CaseSummary",
    "create_case_from_fields",
    "crops_for",
]
