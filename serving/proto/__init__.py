"""The Open Inference Protocol's gRPC service: its proto, the compiled descriptor and the messages."""
