"""Watching a served model: the features the service logs, reading the traffic logs, Evidently drift."""
