"""Watching a served model: the features the service logs, reading the traffic logs, Evidently drift,
the monitor deployment's windows and their history, and the Evidently workspace (dashboard)."""
