"""The Open Inference Protocol (KServe v2) stubs, package `inference`."""
