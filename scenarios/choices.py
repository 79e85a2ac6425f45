"""Allowed values of the datasets' string options (no torch: config validation reads them).

See docs/choices.md for what each value means.
"""

# What extraction does with an image file that cannot be decoded (``dataset.on_bad_image``):
# skip it (one warning per file, the count in results.json) or stop with an error naming it.
BAD_IMAGE_POLICIES = ("skip", "error")

# What identifies the content of an image folder in the feature cache (``cache.verify``):
# path, size, modification time and label of every file, or also a hash of its bytes.
CACHE_VERIFY = ("mtime", "content")
