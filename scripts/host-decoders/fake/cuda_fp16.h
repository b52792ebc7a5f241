// Empty stand-in: stubs.h declares what the decoders use from the CUDA headers.
