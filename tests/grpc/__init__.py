"""The gRPC daemon at the protocol level: raw generated stubs against a real process."""
