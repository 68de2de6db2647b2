"""Fault drills: a real `cachegate-server` under load while Redis misbehaves (`make drills`).

A package (unlike tests/integration) so that its conftest is imported as
`drills.conftest` and never shadows tests/conftest.py's `conftest` module.
"""
