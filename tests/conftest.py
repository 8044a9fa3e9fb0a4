"""Shared test helpers live beside this file (agent_procs.py): this conftest puts tests/ on sys.path."""
