"""Customers, messages and links: what was sent to whom, and how it was instrumented."""
