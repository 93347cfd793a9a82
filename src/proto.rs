//! Code generated from `proto/` by `build.rs`, and the descriptor set served by reflection.

/// The `msstore` proto packages.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod msstore {
    /// `msstore.v1`.
    pub mod v1 {
        tonic::include_proto!("msstore.v1");

        /// The method names of every service, as the protos spell them (written by `build.rs`).
        pub mod methods {
            include!(concat!(env!("OUT_DIR"), "/msstore.v1.methods.rs"));
        }
    }
}

/// The encoded `FileDescriptorSet` of `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/msstore_descriptor.bin"));
