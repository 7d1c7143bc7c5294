"""Generated protobuf and gRPC stubs of the textft.v1 API (`make protos`); never edit them by hand."""
