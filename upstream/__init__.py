"""Talking to upstreams: safe URLs, header policy, the configured client, and the relay."""
