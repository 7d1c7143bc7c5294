"""Contracts between textft's services and its jobs (not the public API)."""
