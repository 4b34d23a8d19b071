"""State shared by every process and instance, through Redis (``REDIS_URL``).

The lowest layer after ``settings``: it knows Redis and nothing of requests, sessions or
upstreams. Callers hand it opaque strings and bytes; it never fails a request, it answers
`shared.redis.UNAVAILABLE` and the caller falls back to its per-process state.
"""
