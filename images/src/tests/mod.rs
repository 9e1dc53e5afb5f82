//! Tests over whole layers and tarballs, built in memory in each of the forms tools write.

mod formats;
mod hostile;
mod integrity;
mod robustness;
mod support;
mod unpack;
