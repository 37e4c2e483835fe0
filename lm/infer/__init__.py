"""Generating text: the KV-cache engine, sampling, chat (Messages API) and the HTTP server."""
