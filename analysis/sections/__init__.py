"""The report's sections, one module each; importing this package registers them all
(``registry.SECTIONS``) in the order the page shows them (``registry`` lists the slots).
A new section is a module here that calls ``registry.register`` and its template under
``analysis/templates/sections/``; the report needs no change."""

from . import summary, balancing, nodes, claims, limits, plots, cpu, throttling, steps, provenance  # noqa: F401
from .registry import SECTIONS, Report, Section, register  # noqa: E402,F401
