"""The generated v1 contract (`protos/cachegate/v1/cache.proto`); regenerate with `make protos`."""
