"""Analytics: rollups, metrics, engagement scores and the best-send-time model."""
