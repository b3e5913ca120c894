"""Measurements over many runs or steps, for the command line and the Compare page: ``bench``
(methods x initializers x IPC x seeds), ``sweep`` (accuracy against IPC), ``windows`` (DATM's
matching windows compared), ``speed`` (how fast each hot loop runs)."""
