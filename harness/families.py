"""The architecture families reports compare, in the order they list them, each with its one colour
in every plot of every report. BRNN is every bidirectional model, whatever its cell; `custom` an
architecture that names no family. A family a plug-in names itself gets a colour from its name, so
it too is the same across reports and machines. Imports nothing heavy: the report reads it."""

from __future__ import annotations

import zlib

COLOURS = {"RNN": "#1f77b4", "LSTM": "#ff7f0e", "GRU": "#2ca02c", "BRNN": "#d62728",
           # the families proposed since (harness.archs: indrnn, orthogonal, lru, minrnn, mamba)
           "IndRNN": "#8c564b", "ORNN": "#e377c2", "LRU": "#bcbd22", "minGRU": "#17becf", "minLSTM": "#393b79",
           "Mamba": "#637939", "MLP": "#7f7f7f", "custom": "#9467bd"}
FAMILIES = tuple(COLOURS)
SPARE = ("#8c6d31", "#843c39", "#5254a3", "#9c9ede", "#cedb9c", "#e7969c", "#7b4173", "#de9ed6")


def colour(family: str) -> str:
    """The family's colour (matplotlib hex)."""
    return COLOURS.get(family) or SPARE[zlib.crc32(family.encode()) % len(SPARE)]


def ordered(families) -> list[str]:
    """`families` in report order: the known ones first, then the others by name."""
    return [f for f in FAMILIES if f in families] + sorted(f for f in families if f not in COLOURS)
