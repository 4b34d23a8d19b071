"""Who is this request? Session cookies and tokens, decoded into a `Session`."""
