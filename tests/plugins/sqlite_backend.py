"""The SQLite backend's contract factory (issue #6)."""
