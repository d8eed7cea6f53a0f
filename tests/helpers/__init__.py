"""Plain helpers shared by tests of several packages (imported as ``tests.helpers.X``); fixtures live in the conftest files."""
