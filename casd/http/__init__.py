"""The HTTP layer: thin aiohttp handlers over the services."""
