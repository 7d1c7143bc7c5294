"""Generated protobuf stubs of textft.internal.v1 (`make protos`); never edit them by hand."""
