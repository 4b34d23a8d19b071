"""The browser side: gatehouse's own HTTP/1.1 server connection under Tornado's Application."""
