//! Part 1: the floors, empty XDP and tc programs (the cost of the harness itself).

use super::*;

/// One empty program of `FLOOR_OBJECT`: `floor_xdp` or `floor_tc`.
pub(crate) struct Floor {
    pub(crate) ebpf: Ebpf,
    pub(crate) xdp: bool,
    pub(crate) frame: Vec<u8>,
    pub(crate) repeat: u32,
    /// Calls per run, averaged: many when `repeat` is 1.
    pub(crate) calls: u32,
}

impl Floor {
    pub(crate) fn load(xdp: bool, frame: Vec<u8>, repeat: u32, calls: u32) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(FLOOR_OBJECT).context("loading the floor object")?;
        let name = if xdp { "floor_xdp" } else { "floor_tc" };
        let program = ebpf.program_mut(name).context(name)?;
        if xdp {
            <&mut Xdp>::try_from(program)?.load()?;
        } else {
            <&mut SchedClassifier>::try_from(program)?.load()?;
        }
        Ok(Floor {
            ebpf,
            xdp,
            frame,
            repeat,
            calls,
        })
    }
}

impl Case for Floor {
    fn run(&mut self) -> anyhow::Result<Sample> {
        let (name, pass) = if self.xdp {
            ("floor_xdp", XDP_PASS)
        } else {
            ("floor_tc", TC_ACT_OK)
        };
        let program = self.ebpf.program(name).context(name)?;
        let mut total = Sample {
            kernel_ns: 0.0,
            wall_ns: 0.0,
        };
        for _ in 0..self.calls {
            let timed = if self.xdp {
                time_test_run(<&Xdp>::try_from(program)?, &self.frame, self.repeat)?
            } else {
                time_test_run(
                    <&SchedClassifier>::try_from(program)?,
                    &self.frame,
                    self.repeat,
                )?
            };
            expect_verdict(name, timed.verdict, pass)?;
            expect_frame(name, &timed.out, &self.frame)?;
            total.kernel_ns += timed.sample.kernel_ns;
            total.wall_ns += timed.sample.wall_ns;
        }
        let calls = f64::from(self.calls);
        Ok(Sample {
            kernel_ns: total.kernel_ns / calls,
            wall_ns: total.wall_ns / calls,
        })
    }
}
