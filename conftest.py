"""Root of the test suite: loads the shared fixtures and the backend plugins for every test folder.

The backend plugins come first: each registers its contract-suite factory before `core` builds the
parametrised `backend` fixture from the registry.
"""

pytest_plugins = [
    "tests.plugins.redis_servers",
    "tests.plugins.sqlite_backend",
    "tests.plugins.core",
]
