"""Running gatehouse in production: worker processes under a supervisor, the graceful drain,
and the Prometheus metrics."""
