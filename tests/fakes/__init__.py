"""Fake upstreams on real sockets, speaking the real wire formats."""
