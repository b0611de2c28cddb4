//! The pass-everything XDP program, attached on its own: veth delivers frames
//! that the other end sends with XDP_TX or XDP_REDIRECT only when the
//! receiving end runs an XDP program, so labs and benchmarks attach this one
//! there.

use aya::Ebpf;

use crate::{AttachMode, Error, PASS_PROGRAM, attach, load_object, load_xdp, xdp_mut};

/// `xdp_pass` attached to one interface; dropping it detaches.
pub struct PassProgram {
    ebpf: Ebpf,
    attachment: Option<attach::Attachment>,
}

impl PassProgram {
    /// Loads `xdp_pass` and attaches it natively to `iface` in the caller's
    /// network namespace.
    pub fn attach(iface: &str) -> Result<PassProgram, Error> {
        let mut ebpf = load_object()?;
        let program = load_xdp(&mut ebpf, PASS_PROGRAM)?;
        let attachment = attach::attach(program, iface, AttachMode::Native, "xdp_pass")?;
        Ok(PassProgram { ebpf, attachment: Some(attachment) })
    }
}

impl Drop for PassProgram {
    fn drop(&mut self) {
        if let (Some(attachment), Ok(program)) =
            (self.attachment.take(), xdp_mut(&mut self.ebpf, PASS_PROGRAM))
        {
            let _ = attach::detach(program, attachment, PASS_PROGRAM, "xdp_pass");
        }
    }
}
