"""Metrics in and out: reading the trainer's series (Prometheus HTTP API, direct scrape) and the operator's own."""
