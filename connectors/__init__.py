"""CRM connectors (one folder per vendor), the shared runner, and the entry points."""
