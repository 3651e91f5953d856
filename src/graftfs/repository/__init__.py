"""Layer repositories: where graftfs finds layers it need not download, and where it publishes new ones."""
