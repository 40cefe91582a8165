
pub mod packet;
pub mod datapath;
