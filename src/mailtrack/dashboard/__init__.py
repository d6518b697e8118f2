"""The salon manager's dashboard: login, the tracking page, settings and CSV exports (server-rendered)."""
