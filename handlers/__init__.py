"""HTTP routes. Handlers are thin: they name a route's policy and call `auth` and `upstream`."""
