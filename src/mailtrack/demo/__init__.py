"""Synthetic salon history for `mailtrack seed` and `mailtrack demo`: customers with habits, their mail."""
