//! The gRPC API of lockd; generated from proto/*.proto (issue 3).
