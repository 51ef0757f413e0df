"""What the API and the session host share: settings, the object store, the storage layout and the
documents that pass between them through the store."""
