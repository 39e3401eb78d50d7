"""Data files of boltzgen's built-in systems (installed as ``boltzgen.builtin_systems``)."""
