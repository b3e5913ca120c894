"""What a run is and where it goes: ``run`` (one distillation, from a thread), ``manager`` (the app's
queue of runs), ``workers`` (worker processes or Ray actors), ``store`` (SQLite index and files),
``recorder`` (when a run is written), ``jobs`` (what all sessions share), ``estimates`` (cost
before a run)."""
