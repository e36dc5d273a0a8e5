"""cairn_journey: the journey language, its validation and the pure interpreter.

Modules: :mod:`~cairn_journey.model` (document structs), :mod:`~cairn_journey.documents`
(loading with path-and-line problems), :mod:`~cairn_journey.conditions`,
:mod:`~cairn_journey.durations`, :mod:`~cairn_journey.validate` (publish checks, ``Limits``),
:mod:`~cairn_journey.interpreter` (``run_input``), :mod:`~cairn_journey.state`,
:mod:`~cairn_journey.effects`, :mod:`~cairn_journey.catalogue`,
:mod:`~cairn_journey.correlation`, :mod:`~cairn_journey.render` (Liquid templates).
The language reference is docs/journeys.md.
"""

from cairn_journey.catalogue import Catalogue, CompiledJourney
from cairn_journey.documents import (
    DocumentError,
    LoadResult,
    load_documents,
    parse_document,
    parse_text,
    to_document,
)
from cairn_journey.interpreter import run_input
from cairn_journey.problems import Problem
from cairn_journey.state import ProfileState, decode_state, encode_state
from cairn_journey.validate import Limits, check_publishable

__all__ = [
    "Catalogue",
    "CompiledJourney",
    "DocumentError",
    "Limits",
    "LoadResult",
    "Problem",
    "ProfileState",
    "check_publishable",
    "decode_state",
    "encode_state",
    "load_documents",
    "parse_document",
    "parse_text",
    "run_input",
    "to_document",
]
