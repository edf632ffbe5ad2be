"""Real redis-server processes for the tests, and the Redis backends' contract factories (issue #3)."""
