"""Vendor-neutral elasticity logic: models, policy, engine, store. Never imports connectors."""
