"""The store core: typed digests, hashing, safe file I/O, locks, the object store, names
and metadata images.  Everything else in cas builds on this package; it imports nothing
from the others."""
