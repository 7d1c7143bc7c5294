"""Generated protobuf and gRPC stubs of the vendored Open Inference Protocol v2
(protos/textft/oip/v2, `make protos`); never edit them by hand."""
