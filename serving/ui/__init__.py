"""The model explorer: a page served on the HTTP port (`cnnserve serve --http-port N --ui`)."""
