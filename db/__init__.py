"""Persistence: models, sessions, migrations and the queue operations. Imports nothing of ours."""
