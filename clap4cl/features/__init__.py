"""Frozen CLIP features on disk (`cache`): extracted once per backbone, dataset, split and view."""
