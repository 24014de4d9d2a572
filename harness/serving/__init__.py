"""Serving a reward over HTTP for remote:URL: the server, its wire format and its load benchmark."""
