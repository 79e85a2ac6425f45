"""Dataset loaders, one file per dataset family, registered in `scenarios.registry`."""
