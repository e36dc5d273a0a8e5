"""cairn_journey: the journey language, its validation and the pure interpreter.

Modules: :mod:`~cairn_journey.model` (document structs), :mod:`~cairn_journey.documents`
(loading with path-and-line problems), :mod:`~cairn_journey.conditions`,
:mod:`~cairn_journey.durations`, :mod:`~cairn_journey.validate` (publish checks, ``Limits``),
:mod:`~cairn_journey.interpreter` (``run_input``), :mod:`~cairn_journey.state`,
:mod:`~cairn_journey.effects`, :mod:`~cairn_journey.catalogue`,
:mod:`~cairn_journey.correlation`.
"""
