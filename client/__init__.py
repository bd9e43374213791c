"""docl client SDK: typed clients for the score server, a curriculum Sampler and a Reporter."""
