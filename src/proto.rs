//! Code generated from `proto/minicrm/v1/*.proto` by `build.rs`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("minicrm.v1");

/// Encoded descriptors of our protos and their imports, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/minicrm_descriptor.bin"));
