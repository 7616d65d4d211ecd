//! The gRPC API of lockd, generated from `proto/lockd.proto` (documented in docs/lockd-protocol.md).
pub mod lockd {
    pub mod v1 {
        tonic::include_proto!("mafs.lockd.v1");
    }
}
pub use lockd::v1;
