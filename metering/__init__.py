"""Shared code of the metering services: contracts' companions, the pure core, adapters, CLI."""
