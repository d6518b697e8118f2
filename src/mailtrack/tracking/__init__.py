"""Tracking: the /o, /c and /u endpoints, hit classification and the ingest writer."""
